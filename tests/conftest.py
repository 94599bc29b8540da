"""Shared test setup: offline hub, isolated data root, CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("NO_COLOR", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: one intra-op thread each (the trainers they start inherit
    # it), or OpenMP threads spin against the other worker's and a step takes tens of times longer
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    """An empty $CLIPCTL_DATA for the test."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("CLIPCTL_DATA", str(root))
    return root


@pytest.fixture
def run_cli(capsys):
    """Run `clipctl ARGS` in-process; returns (exit_code, stdout, stderr)."""
    from clipctl.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(autouse=True)
def _fresh_memory_fs():
    """fsspec's memory:// is one store per process: every test starts and leaves it empty (the shard tests use it
    as an object store, and a stale index there would renumber another test's samples)."""
    from helpers.shards import clear_memory_fs

    clear_memory_fs()
    yield
    clear_memory_fs()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end (`slow`) tests first, the longest-running kind: xdist's workers start on them at once and
    the quick tests fill in around them, instead of one long test (the tour: minutes) starting last and running
    alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
