"""Accelerate's conventions: `accelerate launch --mixed_precision` / `--cpu` (and `accelerate config`, which the
launcher exports the same way) decide what the recipe leaves on `auto`; an explicit recipe value wins, with one
warning naming both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.output import assert_one_error_line
from helpers.trainkit import QUICK, make_tiny_shapes, pretend_cpu, tiny_overrides, tiny_recipe

from clipctl.model.clip import CLIPModel
from clipctl.recipe import TrainConfig
from clipctl.train.devices import LAUNCH_CPU, LAUNCH_PRECISION, resolve_device
from clipctl.train.trainer import TrainOptions, train

FROM_LAUNCHER = f"{LAUNCH_PRECISION} (accelerate launch / accelerate config)"
AUTO = {"train.precision": "auto", "train.device": "auto"}  # the quickstart names cpu and float32 itself


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_tiny_shapes(tmp_path_factory.mktemp("data"))


def dry_run(run_cli, shapes: Path, tmp_path: Path, *overrides: str) -> tuple[dict, str]:
    code, out, err = run_cli("train", "quickstart", *tiny_overrides(shapes, **AUTO), *overrides, "--dry-run", "--json")
    assert code == 0, err
    return json.loads(out), err


def test_auto_precision_trains_in_the_launchers_bf16(shapes, tmp_path, monkeypatch):
    monkeypatch.setenv(LAUNCH_PRECISION, "bf16")
    seen = []
    forward = CLIPModel.forward

    def recording(self, images, tokens):
        image, text = forward(self, images, tokens)
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return image, text

    monkeypatch.setattr(CLIPModel, "forward", recording)
    summary = train(tiny_recipe(shapes, **QUICK, **AUTO), TrainOptions(out_dir=tmp_path, name="bf16"))
    assert summary["status"] == "completed" and summary["steps"] == 2
    training = seen[:2]  # the two updates (evaluation follows, in the run's precision too)
    assert training == [(True, torch.bfloat16)] * 2, seen
    meta = json.loads((tmp_path / "bf16" / "meta.json").read_text())
    assert meta["precision"] == "bf16" and meta["environment"]["precision_from"] == FROM_LAUNCHER


def test_dry_run_says_what_was_chosen_and_from_where(shapes, tmp_path, monkeypatch, run_cli):
    pretend_cpu(monkeypatch, avx512_bf16=False)  # a CPU without bf16 matrix units
    plan, _ = dry_run(run_cli, shapes, tmp_path)
    assert plan["precision"] == "no" and plan["precision_from"].startswith("auto")
    assert plan["device"] == "cpu" and plan["device_from"].startswith("auto")
    monkeypatch.setenv(LAUNCH_PRECISION, "bf16")
    monkeypatch.setenv(LAUNCH_CPU, "true")
    plan, _ = dry_run(run_cli, shapes, tmp_path)
    assert plan["precision"] == "bf16" and plan["precision_from"] == FROM_LAUNCHER
    assert plan["device"] == "cpu" and plan["device_from"] == f"{LAUNCH_CPU} (accelerate launch / accelerate config)"


def test_an_explicit_recipe_precision_wins_with_one_warning_naming_both(shapes, tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv(LAUNCH_PRECISION, "bf16")
    plan, err = dry_run(run_cli, shapes, tmp_path, 'train.precision="no"')
    assert plan["precision"] == "no" and plan["precision_from"] == "recipe (train.precision)"
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, err
    assert "train.precision = 'no'" in warnings[0] and f"{LAUNCH_PRECISION}=bf16" in warnings[0]
    monkeypatch.setenv(LAUNCH_PRECISION, "no")  # the same value: no conflict, nothing to say
    _, err = dry_run(run_cli, shapes, tmp_path, 'train.precision="no"')
    assert "warning: " not in err


@pytest.mark.parametrize(("value", "expected"), [("fp8", "clipctl trains in no, bf16, fp16"), ("fp16", "needs a CUDA")])
def test_a_launcher_precision_clipctl_cannot_use_is_one_line(shapes, tmp_path, monkeypatch, run_cli, value, expected):
    monkeypatch.setenv(LAUNCH_PRECISION, value)
    args = tiny_overrides(shapes, **AUTO)
    code, _, err = run_cli("train", "quickstart", *args, "--out", str(tmp_path), "--name", "x")
    assert code == 2 and f"{LAUNCH_PRECISION}={value}" in err and expected in err, err
    assert_one_error_line(err)
    assert not (tmp_path / "x").exists()


def test_an_explicit_recipe_device_wins_over_the_launchers_cpu(monkeypatch, capsys):
    monkeypatch.setenv(LAUNCH_CPU, "True")
    assert resolve_device(TrainConfig(device="auto")).value == "cpu"
    assert capsys.readouterr().err == ""
    chosen = resolve_device(TrainConfig(device="mps"))
    assert chosen.value == "accelerator" and chosen.source == "recipe (train.device)"
    err = capsys.readouterr().err
    assert err.count("warning: ") == 1 and "train.device = 'mps'" in err and f"{LAUNCH_CPU}=True" in err


@pytest.mark.slow
def test_accelerate_launch_flags_reach_an_auto_recipe(shapes, tmp_path):
    """The real launcher, as a user types it: `accelerate launch --cpu --mixed_precision bf16 -m clipctl train`."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]
    launch += ["--dynamo_backend", "no", "--cpu", "--mixed_precision", "bf16", "-m", "clipctl", "train", "quickstart"]
    args = [*tiny_overrides(shapes, **AUTO), "--out", str(tmp_path), "--dry-run", "--json"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    done = subprocess.run([*launch, *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    plan = json.loads(done.stdout)
    assert plan["precision"] == "bf16" and plan["precision_from"] == FROM_LAUNCHER
    assert plan["device"] == "cpu" and plan["device_from"].startswith(LAUNCH_CPU)
