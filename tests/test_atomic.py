"""Atomic writes: all-or-nothing replacement, no temp files left behind, the usual file mode."""

from __future__ import annotations

import os

import pytest

from clipctl.atomic import atomic_write, atomic_write_text


def test_new_file_gets_the_umask_mode_not_mkstemps_private_one(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "summary.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o644


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "state.pt"
    atomic_write_text(target, "old")

    def torn(handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, torn)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_staged_dir_appears_whole_with_a_plain_folder_mode(tmp_path):
    from clipctl.atomic import staged_dir

    target = tmp_path / "export"
    old = os.umask(0o022)
    try:
        with staged_dir(target) as stage:
            (stage / "a.json").write_text("{}")
            assert not target.exists() and stage.name.startswith(".export.")
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] == ["export"] and (target / "a.json").read_text() == "{}"
    assert target.stat().st_mode & 0o777 == 0o755


def test_staged_dir_leaves_nothing_when_the_block_fails(tmp_path):
    from clipctl.atomic import staged_dir

    with pytest.raises(KeyboardInterrupt):
        with staged_dir(tmp_path / "export") as stage:
            (stage / "half.bin").write_bytes(b"x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
