"""Two processes (torchrun, gloo, CPU) train like one process on the same global batches; rank 0 alone writes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers.trainkit import make_tiny_shapes, state_tensors, tiny_overrides, tiny_recipe

from clipctl.run.checkpoint import load_state
from clipctl.run.layout import RunDir
from clipctl.train.trainer import TrainOptions, train

# No dropout, no augmentation, no BatchNorm: random masks and per-process batch statistics cannot match
# between one batch of 32 and two of 16 (test_vit uses LayerNorm).
EXTRA = {
    "train.epochs": 1,
    "train.max_steps": 4,
    "data.augment": False,
    "model.image_model": "test_vit",
    "model.text_config": {
        "n_layers": 2,
        "dim": 128,
        "hidden_dim": 256,
        "n_heads": 4,
        "dropout": 0.0,
        "attention_dropout": 0.0,
    },
    "loss.rho_I": 8.0,  # >= log(B-1): the recipe warns, and only one rank may print it
    "loss.rho_T": 8.0,
    "train.save_every_epochs": 1,  # an epoch checkpoint: every rank builds the state, rank 0 writes
    "tracking.report_to": ["tensorboard"],  # rank 0's tracker
}


@pytest.mark.slow
def test_two_process_run_matches_one_process(tmp_path):
    shapes = make_tiny_shapes(tmp_path / "data")
    train(tiny_recipe(shapes, **EXTRA), TrainOptions(out_dir=tmp_path, name="one"))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "clipctl",
        "train",
        "quickstart",
        *tiny_overrides(shapes, **EXTRA),
        "--out",
        str(tmp_path / "two"),
        "--name",
        "two",
    ]
    env = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # every rank ran the same command; one talks (the recipe's rho warning, the result table)
    assert proc.stderr.count("warning: loss.rho_I") == 1 and proc.stderr.count("test metrics of the best") == 1
    assert "terminate called" not in proc.stderr
    run = tmp_path / "two" / "two"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2 and summary["steps"] == 4
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["two"]  # nothing written by rank 1 elsewhere
    assert len([r for r in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in r]) == 1  # one writer
    assert (run / "train.log").read_text().count("epoch 0: tr@1=") == 1 and list((run / "tb").iterdir())
    epoch = load_state(run / "checkpoints" / "epoch_1.pt")
    last = load_state(run / "state" / "last.pt")
    assert epoch["progress"]["step"] == 4 and len(epoch["rng"]) == 2
    assert all(torch.equal(tensor, last["model"][key]) for key, tensor in epoch["model"].items())
    one, two = load_state(tmp_path / "one" / "state" / "last.pt"), load_state(run / "state" / "last.pt")
    single, double = state_tensors(one["loss"]), state_tensors(two["loss"])
    assert single and single.keys() == double.keys()
    for key, value in single.items():
        # The shift b is in units of 1/τ (≈100): float32 rounding of the similarities scales with it.
        torch.testing.assert_close(double[key], value, atol=1e-5, rtol=1e-4)
    assert one["progress"]["step"] == two["progress"]["step"]
    assert len(one["rng"]) == 1 and len(two["rng"]) == 2  # every rank's own RNG state, in rank order


@pytest.mark.slow
def test_sigterm_to_a_torchrun_group_saves_once_and_torchrun_reports_it_its_way(tmp_path):
    """Slurm and systemd signal the whole group, and torchrun forwards the signal again: each rank stops once,
    saving (no "second SIGTERM"); torchrun itself exits 1, its behaviour for any rank exit but 0 (README)."""
    shapes = make_tiny_shapes(tmp_path / "data")
    long = {**EXTRA, "train.epochs": 50, "train.max_steps": 0}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "clipctl", "train", "quickstart", *tiny_overrides(shapes, **long), "--out", str(tmp_path)]
    env = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(
        [*command, "--name", "g"], stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    run = RunDir(tmp_path / "g")
    try:
        deadline = time.monotonic() + 300
        while not (run.metrics.is_file() and run.metrics.read_text().count("\n")) and time.monotonic() < deadline:
            time.sleep(0.05)  # the first train record: both ranks are in the loop
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1 and "SignalException" in err, err[-3000:]
    assert err.count("clipctl: error: interrupted at epoch") == 2 and "second SIGTERM" not in err, err[-3000:]
    summary = json.loads(run.summary.read_text())
    assert summary["status"] == "interrupted" and summary["world_size"] == 2
    assert load_state(run.last_state)["progress"]["step"] == summary["steps"] > 0
