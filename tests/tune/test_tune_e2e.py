"""End to end with the real trainer: a tiny GP study on `shapes` (3 trials of a few steps; the third is the
GP's), killed while trial 2 trains and resumed, proposes the same points as an uninterrupted study;
`tune best --export` gives a recipe `clipctl train` accepts. About 7 trainer runs: minutes on a CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.trainkit import make_tiny_shapes

TRAINER_AVAILABLE = (
    importlib.util.find_spec("clipctl.train") is not None
    and importlib.util.find_spec("clipctl.train.trainer") is not None
)

BASE = """\
[run]
seed = 0
[data]
train = "{shapes}/train.json"
image_size = 32
max_text_len = 16
num_workers = 0
persistent_workers = false
pin_memory = false
augment = false
[model]
image_model = "test_vit"
image_pretrained = false
text_model = "distilbert-base-uncased"
text_pretrained = false
text_config = { n_layers = 1, dim = 32, hidden_dim = 64, n_heads = 2 }
tokenizer = "wordpiece"
vocab_size = 200
embed_dim = 32
text_pooling = "mean"
[loss]
name = "sogclr"
[optim]
name = "adamw"
lr = 1e-3
[sched]
name = "cosine"
warmup_epochs = 0
[train]
epochs = 2
batch_size = 32
max_steps = 6
precision = "no"
device = "cpu"
deterministic = true
[eval]
batch_size = 64
val_retrieval = "{shapes}/val.json"
val_zeroshot = "{shapes}/zeroshot_val"
test_retrieval = "{shapes}/test.json"
test_zeroshot = "{shapes}/zeroshot"
"""

TUNE = """\
[tune]
base = "base.toml"
phase = 1
strategy = "gp"
n_trials = 3
n_initial = 2
seed = 0
[tune.fixed]
"train.epochs" = 1
[tune.space]
"optim.name" = ["adamw", "radam"]
"optim.lr" = { low = 1e-4, high = 1e-2, prior = "log-uniform" }
"""


def tune_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "clipctl", "tune", *map(str, args)]


def proposals(study: Path) -> list[dict]:
    from clipctl.tune.store import Study

    return [e["proposed"] for e in Study(study).events(1) if e["event"] == "trial_started" and not e.get("rerun")]


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not TRAINER_AVAILABLE, reason="needs the trainer (clipctl.train)")
def test_tune_on_shapes_killed_and_resumed_matches_an_uninterrupted_study(tmp_path, data_root):
    (tmp_path / "base.toml").write_text(BASE.replace("{shapes}", str(make_tiny_shapes(data_root))))
    tune = tmp_path / "tune.toml"
    tune.write_text(TUNE)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}

    straight = subprocess.run(
        tune_cmd("--recipe", tune, "--study", tmp_path / "straight"),
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        tune_cmd("--recipe", tune, "--study", killed),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline and process.poll() is None:  # stop it while trial 2 trains
        if (killed / "study.toml").exists() and len(proposals(killed)) >= 2:
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.2)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 130, err[-3000:]

    resumed = subprocess.run(
        tune_cmd("--recipe", tune, "--study", killed), env=env, capture_output=True, text=True, timeout=1800
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "re-run" in resumed.stderr and "replaying" not in resumed.stderr
    assert proposals(killed) == proposals(tmp_path / "straight")

    best = tmp_path / "best.toml"
    exported = subprocess.run(
        tune_cmd("best", "--study", killed, "--export", best), env=env, capture_output=True, text=True, timeout=300
    )
    assert exported.returncode == 0, exported.stderr
    dry = subprocess.run(
        [sys.executable, "-m", "clipctl", "train", best, "--dry-run", "--json", "--out", tmp_path / "runs"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert json.loads(dry.stdout)["seconds_per_step"] > 0
