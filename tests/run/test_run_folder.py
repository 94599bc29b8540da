"""What a run folder keeps beside the metrics: the console output (train.log), the command line and machine
(meta.json), and epoch checkpoints (train.save_every_epochs / train.keep_checkpoints) that eval and resume read."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers.trainkit import ONE, tiny_recipe, train_args

from clipctl import console as console_module
from clipctl.errors import InterruptedRun
from clipctl.run.checkpoint import load_checkpoint, load_state
from clipctl.run.layout import RunDir
from clipctl.train.trainer import TrainOptions, train


def test_train_log_is_the_console_output_in_plain_text_and_a_resume_appends(shapes, tmp_path, run_cli, capsys):
    code, _, err = run_cli(*train_args(shapes, tmp_path, "cut", **ONE))
    assert code == 0, err
    log = (tmp_path / "cut" / "train.log").read_text()
    assert "\x1b" not in log and "epoch 0/0: 8/8 step" in log and "epoch 0: tr@1=" in log
    assert set(log.splitlines()) <= set(err.splitlines())  # the CLI's closing table is the only thing not in it
    with pytest.raises(InterruptedRun):
        train(tiny_recipe(shapes, **ONE), TrainOptions(out_dir=tmp_path, name="stop", stop_after_steps=3))
    capsys.readouterr()
    first = (tmp_path / "stop" / "train.log").read_text()
    assert first.splitlines()[-1].startswith("clipctl: error: interrupted at epoch 0, update 3")
    code, _, err = run_cli(*train_args(shapes, tmp_path, "stop", **ONE), "--resume", "auto")
    assert code == 0, err
    log = (tmp_path / "stop" / "train.log").read_text()
    assert log.startswith(first) and f"resuming {tmp_path / 'stop'} at epoch 0, update 3" in log[len(first) :]


def test_on_a_terminal_the_log_gets_plain_progress_lines_instead_of_the_bar(shapes, tmp_path, monkeypatch):
    monkeypatch.setattr(console_module, "interactive", lambda: True)  # a Rich bar on screen
    train(tiny_recipe(shapes, **ONE), TrainOptions(out_dir=tmp_path, name="tty"))
    log = (tmp_path / "tty" / "train.log").read_text()
    assert "\x1b" not in log and "epoch 0/0: 8/8 step (100.0%)" in log and "loss=" in log


def test_meta_names_the_command_line_and_the_machine_of_each_start(shapes, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["clipctl", "train", "quickstart", "--name", "m"])
    with pytest.raises(InterruptedRun):
        train(tiny_recipe(shapes, **ONE), TrainOptions(out_dir=tmp_path, name="m", stop_after_steps=3))
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["argv"] == ["clipctl", "train", "quickstart", "--name", "m"]
    environment = meta["environment"]
    assert environment["torch"] == meta["versions"]["torch"] and environment["python"] == meta["versions"]["python"]
    assert environment["clipctl"] and environment["platform"] and environment["device"] == "cpu"
    assert environment["world_size"] == 1 and environment["precision"] == "no"
    monkeypatch.setattr("sys.argv", ["clipctl", "train", "quickstart", "--name", "m", "--resume", "auto"])
    train(tiny_recipe(shapes, **ONE), TrainOptions(out_dir=tmp_path, name="m", resume="auto"))
    resumed = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert resumed["argv"] == meta["argv"] and resumed["start"] == meta["start"]  # the first start's
    assert resumed["resumed"]["argv"][-2:] == ["--resume", "auto"] and resumed["resumed_at_step"] == 3
    assert resumed["resumed"]["environment"]["device"] == "cpu"


@pytest.mark.slow
def test_epoch_checkpoints_are_pruned_and_load_with_eval_and_resume(shapes, tmp_path, run_cli, monkeypatch):
    every = {"train.epochs": 3, "train.save_every_epochs": 1, "train.keep_checkpoints": 2}
    train(tiny_recipe(shapes, **every), TrainOptions(out_dir=tmp_path, name="e"))
    run = RunDir(tmp_path / "e")
    assert list(run.epoch_checkpoints()) == [2, 3] and not list(run.checkpoints_dir.glob(".*.tmp"))
    assert os.path.samefile(run.latest_epoch_checkpoint, run.epoch_checkpoint(3))
    finished = load_state(run.last_state)
    for key, tensor in finished["model"].items():  # the last epoch's checkpoint is the final state
        assert torch.equal(tensor, load_state(run.latest_epoch_checkpoint)["model"][key]), key
    assert load_checkpoint(run.epoch_checkpoint(2))["epoch"] == 1  # 0-based, like ckpt.pt's

    monkeypatch.setenv("CLIPCTL_DATA", str(shapes.parent))
    code, out, err = run_cli("eval", run.epoch_checkpoint(2), "--shapes", "--json")
    assert code == 0 and 0 <= json.loads(out)["shapes"]["objective"] <= 1, err

    again = tiny_recipe(shapes, **{**every, "train.keep_checkpoints": 1})  # pruning changes no result
    summary = train(again, TrainOptions(out_dir=tmp_path, name="b", resume=str(run.epoch_checkpoint(2))))
    assert summary["status"] == "completed" and summary["steps"] == 24
    resumed = load_state(tmp_path / "b" / "state" / "last.pt")
    for key, tensor in finished["model"].items():
        assert torch.equal(tensor, resumed["model"][key]), key
    assert list(RunDir(tmp_path / "b").epoch_checkpoints()) == [3]


def test_no_epoch_checkpoints_unless_asked(straight):
    assert not RunDir(straight).checkpoints_dir.exists()


@pytest.mark.parametrize(("key", "value"), [("train.save_every_epochs", 0), ("train.keep_checkpoints", 0)])
def test_epoch_checkpoint_keys_are_checked(key, value, run_cli):
    code, _, err = run_cli("recipes", "validate", "quickstart", f"{key}={value}")
    assert code == 2 and key in err, err
