"""Resume follows the recipe, not what happens to be on disk; a run stopped before its first state save starts
over in place with `--resume restart`; a storage fault names the path and the way back.

Each refusal asserts the exit code, the one line, and that nothing on disk changed.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.output import assert_ends_in_one_error_line, assert_one_error_line, file_snapshot
from helpers.trainkit import ONE, stable_metrics, tiny_recipe, train_args

from clipctl.atomic import atomic_write
from clipctl.errors import InterruptedRun
from clipctl.run.checkpoint import load_state
from clipctl.run.layout import RunDir
from clipctl.run.writer import RunClaim
from clipctl.train import trainer as trainer_module
from clipctl.train.trainer import TrainOptions, train

# Recipes that differ from QUICK's in a key that changes results
OTHER_RECIPES = {"optim.lr": 0.5, "train.epochs": 2, "run.seed": 7}


def killed_before_its_first_save(shapes: Path, out: Path, name: str, monkeypatch) -> RunDir:
    """A one-epoch run whose process dies (SIGKILL, the OOM killer) after its best checkpoint, before its state."""

    def killed(self) -> None:
        raise KeyboardInterrupt  # stands for SIGKILL: nothing after it runs, not even the summary

    with monkeypatch.context() as patch:
        patch.setattr(trainer_module.Trainer, "save_state", killed)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_recipe(shapes, **ONE), TrainOptions(out_dir=out, name=name))
    run = RunDir(out / name)
    assert json.loads(run.summary.read_text())["status"] == "running"
    assert run.checkpoint.is_file() and not run.last_state.exists()
    return run


# ------------------------------------------------------------------------------ resume follows the recipe
@pytest.mark.parametrize("state", ["kept", "deleted"])
def test_a_completed_run_is_reported_for_its_recipe_and_refused_for_another(state, shapes, tmp_path, run_cli):
    code, _, err = run_cli(*train_args(shapes, tmp_path, "r"))
    assert code == 0, err
    if state == "deleted":
        shutil.rmtree(tmp_path / "r" / "state")
    before = file_snapshot(tmp_path)
    for key, value in OTHER_RECIPES.items():
        for mode in ("auto", "restart"):
            code, _, err = run_cli(*train_args(shapes, tmp_path, "r", **{key: value}), "--resume", mode)
            assert code == 5 and "completed with another recipe" in err and f"{key}: run " in err, (mode, err)
            assert_one_error_line(err)
    assert file_snapshot(tmp_path) == before  # never trained over
    # the same recipe, or one that differs only where results cannot (how long ranks wait): reported, untouched
    for same in ({}, {"train.dist_timeout_s": 77}):
        code, _, err = run_cli(*train_args(shapes, tmp_path, "r", **same), "--resume", "auto")
        assert code == 0 and "already completed" in err and "TR@1" in err, err
    assert file_snapshot(tmp_path) == before


def test_a_failed_run_without_state_names_the_restart(shapes, tmp_path, run_cli):
    code, _, err = run_cli(*train_args(shapes, tmp_path, "f"))
    assert code == 0, err
    shutil.rmtree(tmp_path / "f" / "state")
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    (tmp_path / "f" / "summary.json").write_text(json.dumps({**summary, "status": "failed"}))
    before = file_snapshot(tmp_path)
    code, _, err = run_cli(*train_args(shapes, tmp_path, "f"), "--resume", "auto")
    assert code == 5 and "state/last.pt" in err and "--resume restart" in err
    assert_one_error_line(err)
    assert file_snapshot(tmp_path) == before


# ------------------------------------------------------------------------------ resume on another machine
def cut_at_update_3(shapes: Path, out: Path) -> RunDir:
    """A one-epoch run over `shapes` stopped (state saved) after its third update."""
    with pytest.raises(InterruptedRun):
        train(tiny_recipe(shapes, **ONE), TrainOptions(out_dir=out, name="cut", stop_after_steps=3))
    return RunDir(out / "cut")


@pytest.mark.slow
def test_a_run_moved_with_its_data_resumes_bit_identically(shapes, straight, tmp_path):
    """Another machine: the run folder and the data live elsewhere, the loader has other workers."""
    here = shutil.copytree(shapes, tmp_path / "here" / "shapes")
    cut = cut_at_update_3(here, tmp_path / "runs")
    there = tmp_path / "there"
    shutil.move(cut.root, there / "cut")
    data = shutil.move(here, tmp_path / "elsewhere" / "shapes")  # nothing is left where the run started
    neutral = {"data.num_workers": 1, "data.persistent_workers": False, "data.root": str(tmp_path / "elsewhere")}
    resumed = train(
        tiny_recipe(data, **ONE, **neutral, **{"data.image_root": str(data)}),
        TrainOptions(out_dir=there, name="cut", resume="auto"),
    )
    assert resumed["status"] == "completed" and resumed["steps"] == 8
    a, b = load_state(straight / "state" / "last.pt"), load_state(there / "cut" / "state" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    located = ("retrieval_source", "zeroshot_source")  # the evaluation sets' paths, moved with the data
    assert [{k: v for k, v in r.items() if k not in located} for r in stable_metrics(straight)] == [
        {k: v for k, v in r.items() if k not in located} for r in stable_metrics(there / "cut")
    ]


def test_moved_data_with_other_pairs_is_another_recipe(shapes, tmp_path, run_cli, capsys):
    """Same count, two captions swapped: the per-sample state would attach to other samples, so resume refuses."""
    cut = cut_at_update_3(shapes, tmp_path)
    other = shutil.copytree(shapes, tmp_path / "other" / "shapes")
    pairs = json.loads((other / "train.json").read_text())
    pairs[0]["caption"], pairs[1]["caption"] = pairs[1]["caption"], pairs[0]["caption"]
    (other / "train.json").write_text(json.dumps(pairs))
    capsys.readouterr()
    before = file_snapshot(cut.root)
    code, _, err = run_cli(*train_args(other, tmp_path, "cut", **ONE), "--resume", "auto")
    assert code == 5 and "state belongs to another recipe (data.train: state " in err, err
    assert "training pairs there are not the ones it was saved with" in err
    assert_one_error_line(err)
    assert file_snapshot(cut.root) == before


def test_a_changed_result_key_is_still_refused_beside_neutral_ones(shapes, tmp_path, run_cli, capsys):
    cut = cut_at_update_3(shapes, tmp_path)
    capsys.readouterr()
    before = file_snapshot(cut.root)
    changed = {**ONE, "data.num_workers": 2, "tracking.log_every_steps": 3, "optim.lr": 0.5}
    code, _, err = run_cli(*train_args(shapes, tmp_path, "cut", **changed), "--resume", "auto")
    assert code == 5 and "state belongs to another recipe (" in err, err
    assert "optim.lr: state 0.001 vs recipe 0.5" in err
    assert "num_workers" not in err and "log_every_steps" not in err
    assert_one_error_line(err)
    assert file_snapshot(cut.root) == before


# ------------------------------------------------------------------------------ --resume restart
def test_a_run_killed_before_its_first_save_starts_over_in_place(
    shapes, straight, tmp_path, run_cli, monkeypatch, capsys
):
    run = killed_before_its_first_save(shapes, tmp_path, "k", monkeypatch)
    capsys.readouterr()
    run.eval_dir.mkdir()
    (run.eval_dir / "shapes.json").write_text("{}")  # `clipctl eval` of the dead attempt's checkpoint
    before = file_snapshot(tmp_path)
    code, _, err = run_cli(*train_args(shapes, tmp_path, "k", **ONE))
    assert code == 4 and "saved no state yet" in err and "--resume restart" in err
    assert_one_error_line(err)
    code, _, err = run_cli(*train_args(shapes, tmp_path, "k", **ONE), "--resume", "auto")
    assert code == 5 and "state/last.pt" in err and "--resume restart" in err
    assert_one_error_line(err)
    code, _, err = run_cli(*train_args(shapes, tmp_path, "k", **{**ONE, "optim.lr": 0.5}), "--resume", "restart")
    assert code == 5 and "started with another recipe" in err and "optim.lr: run " in err
    assert_one_error_line(err)
    claim = RunClaim(run).acquire()  # another process trains it
    try:
        code, _, err = run_cli(*train_args(shapes, tmp_path, "k", **ONE), "--resume", "restart")
    finally:
        claim.release()
    assert code == 4 and "another clipctl process" in err
    assert_one_error_line(err)
    assert file_snapshot(tmp_path) == before

    code, _, err = run_cli(*train_args(shapes, tmp_path, "k", **ONE), "--resume", "restart")
    assert code == 0, err
    assert json.loads(run.summary.read_text())["status"] == "completed"
    assert load_state(run.last_state)["progress"]["step"] == 8
    assert stable_metrics(run.root) == stable_metrics(straight)  # the dead attempt's records are gone
    assert not run.eval_dir.exists()  # its eval results described the old checkpoint
    finished = file_snapshot(tmp_path)
    code, _, err = run_cli(*train_args(shapes, tmp_path, "k", **ONE), "--resume", "restart")
    assert code == 0 and "already completed" in err
    assert file_snapshot(tmp_path) == finished


def test_restart_never_discards_a_saved_state(shapes, straight, tmp_path, run_cli):
    with pytest.raises(InterruptedRun):
        train(tiny_recipe(shapes, **ONE), TrainOptions(out_dir=tmp_path, name="i", stop_after_steps=3))
    code, _, err = run_cli(*train_args(shapes, tmp_path, "i", **ONE), "--resume", "restart")
    assert code == 0 and "resuming" in err and "update 3" in err, err
    assert stable_metrics(tmp_path / "i") == stable_metrics(straight)


# ------------------------------------------------------------------------------ storage faults
def failing_state_save(code: int, from_save: int):
    """`save_state` on a disk that refuses its `from_save`-th write and every later one with `code`."""
    real_save = trainer_module.save_state
    saves = []

    def save(path: Path, fields: dict) -> None:
        saves.append(path)
        if len(saves) < from_save:
            return real_save(path, fields)

        def refuse(handle) -> None:
            handle.write(b"part of it")
            raise OSError(code, os.strerror(code))  # a failed write names no file; atomic_write adds it

        atomic_write(path, refuse)

    return save


@pytest.mark.parametrize(
    ("error", "from_save", "reason"),
    [
        (errno.ENOSPC, 1, "disk full (no space left on device); free space, then "),
        (errno.EFBIG, 1, "file too large (over the file-size limit, `ulimit -f`"),
        (errno.EROFS, 1, "read-only file system; make the file system writable, then "),
        (errno.ENOSPC, 2, "disk full (no space left on device); free space, then "),
    ],
)
def test_a_storage_fault_names_the_path_and_the_way_back(
    error, from_save, reason, shapes, tmp_path, run_cli, monkeypatch
):
    monkeypatch.setattr(trainer_module, "save_state", failing_state_save(error, from_save))
    code, _, err = run_cli(*train_args(shapes, tmp_path, "s", **{"train.save_every_steps": 1}))
    run = RunDir(tmp_path / "s")
    way_back = (
        "start this run over with --resume restart (it saved no state yet)"
        if from_save == 1
        else "continue this run with --resume auto"
    )
    assert code == 1 and f"{run.last_state}: {reason}" in err and err.rstrip().endswith(way_back), err
    assert_one_error_line(err)
    summary = json.loads(run.summary.read_text())
    assert summary["status"] == "failed" and f"clipctl: error: {summary['error']}\n" in err
    assert not list(run.root.rglob(".*.tmp"))
    if from_save == 1:
        assert not run.last_state.exists()
    else:
        assert load_state(run.last_state)["progress"]["step"] == from_save - 1  # the last good save, intact


@pytest.mark.slow
def test_a_file_size_limit_is_named_and_the_run_then_starts_over(shapes, straight, tmp_path, run_cli):
    """`ulimit -f` below the best checkpoint's size: the run dies before its first state save (EFBIG)."""
    limit = 1 << 20  # the checkpoint is ~3 MB, the state ~9 MB, every other file a few kB

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-m", "clipctl", *train_args(shapes, tmp_path, "big", **ONE)],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
        preexec_fn=limited,
        timeout=300,
    )
    run = RunDir(tmp_path / "big")
    assert done.returncode == 1, done.stderr
    assert f"{run.checkpoint}: file too large" in done.stderr and "--resume restart" in done.stderr
    assert_ends_in_one_error_line(done.stderr)
    assert json.loads(run.summary.read_text())["status"] == "failed"
    assert not run.last_state.exists() and not list(run.root.rglob(".*.tmp"))
    code, _, err = run_cli(*train_args(shapes, tmp_path, "big", **ONE), "--resume", "auto")
    assert code == 5 and "--resume restart" in err
    code, _, err = run_cli(*train_args(shapes, tmp_path, "big", **ONE), "--resume", "restart")
    assert code == 0, err
    assert stable_metrics(run.root) == stable_metrics(straight)
