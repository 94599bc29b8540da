"""Under a multi-process launch every rank runs the same command: only rank 0 prints, and the process groups
are torn down at exit while the interpreter is still whole."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from clipctl import console


def say_everything() -> None:
    console.info("hello")
    console.warn("careful")
    console.print_table("numbers", ["metric", "%"], [("TR@1", "9.80")])
    console.emit_json({"tr@1": 0.098})


@pytest.mark.parametrize(("rank", "talks"), [(None, True), ("0", True), ("1", False), ("3", False)])
def test_only_rank_zero_talks(monkeypatch, capsys, rank, talks):
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(console, "_stderr", None)
    say_everything()
    out, err = capsys.readouterr()
    if talks:
        assert "hello" in err and "warning: careful" in err and "TR@1" in err and '"tr@1": 0.098' in out
    else:
        assert (out, err) == ("", "")


@pytest.mark.parametrize(
    ("rank", "line"), [(None, "warning: shard 3 skipped"), ("2", "warning: rank 2: shard 3 skipped")]
)
def test_a_warning_only_one_rank_meets_is_said_by_that_rank(monkeypatch, capsys, rank, line):
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(console, "_stderr", None)
    console.warn_any_rank("shard 3 skipped")
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [line]


def test_process_group_is_destroyed_at_exit(tmp_path):
    """A handler registered before the trainer's runs after it (atexit is last in, first out): it must see the
    group already gone."""
    script = textwrap.dedent(f"""
        import atexit
        import torch.distributed as dist
        from clipctl.recipe import TrainConfig
        from clipctl.train.devices import build_accelerator

        atexit.register(lambda: print("initialized at exit:", dist.is_initialized()))
        dist.init_process_group("gloo", init_method="file://{tmp_path / "init"}", rank=0, world_size=1)
        build_accelerator(TrainConfig(device="cpu"))
        build_accelerator(TrainConfig(device="cpu"))  # a second run in the same launch registers nothing new
        print("initialized after the runs:", dist.is_initialized())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["initialized after the runs: True", "initialized at exit: False"]
