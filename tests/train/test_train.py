"""The trainer: run directory contract, exact resume, atomic state, stops, exit codes, dry run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.trainkit import make_tiny_shapes, stable_metrics, state_tensors, tiny_overrides, tiny_recipe

from clipctl.errors import ClipctlError, InterruptedRun
from clipctl.recipe import tomllib
from clipctl.run import checkpoint as checkpoint_module
from clipctl.run.checkpoint import load_checkpoint, load_state
from clipctl.train.trainer import TrainOptions, train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_tiny_shapes(tmp_path_factory.mktemp("data"))


def run(shapes: Path, out: Path, name: str, resume: str | None = None, stop_after: int | None = None, **extra) -> dict:
    return train(
        tiny_recipe(shapes, **extra), TrainOptions(out_dir=out, name=name, resume=resume, stop_after_steps=stop_after)
    )


def test_run_directory_contract(shapes, tmp_path):
    summary = run(shapes, tmp_path, "a")
    root = tmp_path / "a"
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2 and summary["steps"] == 16
    on_disk = json.loads((root / "summary.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["best_epoch"] in (0, 1)
    assert set(on_disk["test"]) >= {"tr@1", "ir@1", "acc@1", "objective", "retrieval_source", "zeroshot_source"}
    assert 0 <= on_disk["test"]["objective"] <= 1 and on_disk["samples_per_s"] > 0
    recipe = tomllib.loads((root / "recipe.toml").read_text())
    assert recipe["train"]["epochs"] == 2 and recipe["run"]["name"] == "a"
    meta = json.loads((root / "meta.json").read_text())
    assert torch.__version__.startswith(meta["versions"]["torch"]) and meta["world_size"] == 1 and meta["end"]
    records = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["epoch"] for r in evals] == [0, 1] and all("val/objective" in r for r in evals)
    assert any(r["type"] == "train" and "lr" in r and "loss" in r for r in records)
    ckpt = load_checkpoint(root / "ckpt.pt")  # weights_only=True inside
    assert ckpt["epoch"] == on_disk["best_epoch"] and "tokenizer_json" in ckpt and "recipe_toml" in ckpt
    state = load_state(root / "state" / "last.pt")
    assert state["progress"]["step"] == 16 and state["loss"]  # per-sample loss state is saved


def test_resume_after_interrupt_is_identical(shapes, tmp_path):
    run(shapes, tmp_path, "straight")
    with pytest.raises(InterruptedRun):
        run(shapes, tmp_path, "cut", stop_after=5)  # mid-epoch 0
    interrupted = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert interrupted["status"] == "interrupted" and interrupted["steps"] == 5
    resumed = run(shapes, tmp_path, "cut", resume="auto")
    assert resumed["status"] == "completed"
    a = load_state(tmp_path / "straight" / "state" / "last.pt")
    b = load_state(tmp_path / "cut" / "state" / "last.pt")
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert stable_metrics(tmp_path / "straight") == stable_metrics(tmp_path / "cut")
    loss_a, loss_b = state_tensors(a["loss"]), state_tensors(b["loss"])
    assert loss_a and loss_a.keys() == loss_b.keys()
    for key, value in loss_a.items():
        assert torch.equal(value, loss_b[key]), key


def test_resuming_a_completed_run_changes_nothing(shapes, tmp_path):
    first = run(shapes, tmp_path, "done")
    files = {name: (tmp_path / "done" / name).read_bytes() for name in ("metrics.jsonl", "summary.json", "ckpt.pt")}
    again = run(shapes, tmp_path, "done", resume="auto")
    assert again == json.loads(json.dumps(first))  # the stored summary, not a second test pass
    for name, content in files.items():
        assert (tmp_path / "done" / name).read_bytes() == content, name


def test_kill_during_state_write_keeps_previous_state(shapes, tmp_path, monkeypatch):
    with pytest.raises(InterruptedRun):
        run(shapes, tmp_path, "w", stop_after=3)
    good = (tmp_path / "w" / "state" / "last.pt").read_bytes()

    def torn_save(obj, handle):
        handle.write(b"partial")
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(checkpoint_module.torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_module.atomic_torch_save({"x": 1}, tmp_path / "w" / "state" / "last.pt")
    assert (tmp_path / "w" / "state" / "last.pt").read_bytes() == good
    assert load_state(tmp_path / "w" / "state" / "last.pt")["progress"]["step"] == 3
    assert not list((tmp_path / "w" / "state").glob("*.tmp"))


def test_nan_loss_stops_with_message_and_keeps_last_good_state(shapes, tmp_path, monkeypatch):
    from clipctl.model.clip import CLIPModel

    original = CLIPModel.forward
    calls = {"n": 0}

    def poisoned(self, images, tokens):
        calls["n"] += 1
        image, text = original(self, images, tokens)
        return (image * float("nan"), text) if calls["n"] == 4 else (image, text)

    monkeypatch.setattr(CLIPModel, "forward", poisoned)
    with pytest.raises(ClipctlError) as info:
        run(shapes, tmp_path, "nan", **{"train.save_every_steps": 1})
    assert "non-finite loss" in str(info.value) and "epoch 0" in str(info.value)
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["status"] == "failed"
    state = load_state(tmp_path / "nan" / "state" / "last.pt")
    assert state["progress"]["step"] == 3
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_dry_run_writes_nothing(shapes, tmp_path):
    plan = train(tiny_recipe(shapes), TrainOptions(out_dir=tmp_path, name="dry", dry_run=True))
    assert plan["steps_per_epoch"] == 8 and plan["total_steps"] == 16 and plan["seconds_per_step"] > 0
    assert not (tmp_path / "dry").exists()


def cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clipctl", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
        **kwargs,
    )


def test_exit_codes_through_the_cli(shapes, tmp_path, data_root):
    base = ["train", "quickstart", *tiny_overrides(shapes), "--out", str(tmp_path)]
    missing = cli("train", "quickstart", 'data.train="cc3m-100k"', "--out", str(tmp_path))
    assert missing.returncode == 3 and "clipctl data fetch cc3m-100k" in missing.stderr
    assert "Traceback" not in missing.stderr
    first = cli(*base, "train.epochs=1", "train.max_steps=2", "--name", "x")
    assert first.returncode == 0, first.stderr
    conflict = cli(*base, "train.epochs=1", "train.max_steps=2", "--name", "x")
    assert conflict.returncode == 4 and "--resume auto" in conflict.stderr
    incompatible = cli(*base, "train.epochs=1", "train.max_steps=2", "optim.lr=0.5", "--name", "x", "--resume", "auto")
    assert incompatible.returncode == 5 and "optim.lr" in incompatible.stderr
    fp16 = cli(*base, 'train.precision="fp16"', "--name", "y")
    assert fp16.returncode == 2 and "bf16" in fp16.stderr


@pytest.mark.slow
def test_sigint_writes_state_and_exits_130(shapes, tmp_path):
    args = [
        "train",
        "quickstart",
        *tiny_overrides(shapes, **{"train.epochs": 50}),
        "--out",
        str(tmp_path),
        "--name",
        "sig",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipctl", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "sig" / "state" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # the first epoch's state exists: training is under way
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume with --resume auto" in err and "Traceback" not in err
    summary = json.loads((tmp_path / "sig" / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert load_state(tmp_path / "sig" / "state" / "last.pt")["progress"]["step"] == summary["steps"]


def test_loss_diagnostics_are_logged_in_metrics(shapes, tmp_path):
    """isogclr_new's τ and staleness diagnostics reach metrics.jsonl: no revisits (null staleness) in the first
    epoch, a measured staleness in the second; shares are fractions."""
    run(shapes, tmp_path, "diag", **{"loss.name": "isogclr_new", "loss.rho_I": 2.0, "loss.rho_T": 2.0})
    records = [json.loads(line) for line in (tmp_path / "diag" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["type"] == "train"]
    assert {r["epoch"] for r in train_records} == {0, 1}
    for record in train_records:
        for side in "IT":
            for share in (f"tau_{side}_at_min", f"tau_{side}_at_max", f"tau_grad_{side}_pos"):
                assert 0.0 <= record[share] <= 1.0, share
            assert record[f"tau_{side}_std"] >= 0.0
        assert (record["stale_I"] is None) == (record["epoch"] == 0)
    assert all(r["stale_I"] > 0 and r["stale_T"] > 0 for r in train_records if r["epoch"] == 1)


def test_rng_state_is_per_rank_and_survives_another_process_count():
    """Each rank's RNG goes into the state; a resume picks its own rank's, or keeps its seeded stream when the
    state came from fewer ranks (and never indexes devices it does not have)."""
    from clipctl.train.rng import rank_rng_state, rng_state, set_rng_state

    torch.manual_seed(1)
    first = rng_state()
    torch.manual_seed(2)
    second = rng_state()
    saved = [first, second]
    assert rank_rng_state(saved, 0, 2) is first and rank_rng_state(saved, 1, 2) is second
    assert rank_rng_state(saved, 0, 1) is first  # 2 processes -> 1
    assert rank_rng_state(saved, 2, 4) is None  # 2 -> 4: ranks 2, 3 keep their own seeded RNG
    assert rank_rng_state(first, 0, 1) is first  # an older state with one dict
    set_rng_state(rank_rng_state(saved, 1, 2))
    expected = torch.rand(3)
    torch.manual_seed(2)
    assert torch.equal(torch.rand(3), expected)


def test_state_holds_one_rng_entry_per_rank_and_model_is_on_device_before_the_optimizer(shapes, tmp_path, monkeypatch):
    from clipctl.train import trainer as trainer_module

    devices = []
    real = trainer_module.build_optimizer
    monkeypatch.setattr(
        trainer_module,
        "build_optimizer",
        lambda model, *a, **k: devices.append({p.device for p in model.parameters()}) or real(model, *a, **k),
    )
    run(shapes, tmp_path, "rng", **{"train.epochs": 1})
    state = load_state(tmp_path / "rng" / "state" / "last.pt")
    assert isinstance(state["rng"], list) and len(state["rng"]) == 1 and "torch" in state["rng"][0]
    assert devices == [{torch.device("cpu")}]


def test_one_process_can_train_in_another_precision_after_a_run():
    """Accelerate's per-process state refuses a second precision; a script training a float32 run and then a
    bf16 one (and back) must not need a fresh interpreter."""
    from clipctl.recipe import TrainConfig
    from clipctl.train.devices import build_accelerator

    for precision in ("no", "bf16", "no"):
        assert build_accelerator(TrainConfig(device="cpu", precision=precision)).mixed_precision == precision


def test_process_group_timeout_is_a_recipe_key_and_not_tracked_for_resume():
    from clipctl.recipe import TrainConfig
    from clipctl.train.devices import build_accelerator
    from clipctl.train.trainer import _recipe_difference

    accelerator = build_accelerator(TrainConfig(device="cpu", precision="no", dist_timeout_s=1234))
    assert accelerator.init_handler.timeout.total_seconds() == 1234
    assert TrainConfig().dist_timeout_s == 7200
    assert _recipe_difference({"train": {"dist_timeout_s": 600}}, {"train": {"dist_timeout_s": 7200}}) == ""


def test_resume_on_reordered_pairs_of_the_same_count_is_refused_unless_the_loss_state_is_reset(
    shapes, tmp_path, run_cli
):
    """The per-sample loss state is stored by index: reordered (or regenerated) pairs of the same count would
    hand every sample another's state, so the state records which samples it belongs to."""
    data = tmp_path / "shapes"
    shutil.copytree(shapes, data)
    with pytest.raises(InterruptedRun):
        run(data, tmp_path, "r", stop_after=5)
    saved = load_state(tmp_path / "r" / "state" / "last.pt")["sample_identity"]
    assert len(saved) == 64 and json.loads((tmp_path / "r" / "summary.json").read_text())["sample_identity"] == saved
    pairs = json.loads((data / "train.json").read_text())
    (data / "train.json").write_text(json.dumps(pairs[::-1]))
    args = ["train", "quickstart", *tiny_overrides(data), "--out", str(tmp_path), "--name", "r", "--resume", "auto"]
    listing = sorted(p.name for p in (tmp_path / "r").rglob("*"))
    code, _, err = run_cli(*args)
    line = " ".join(err.split())
    assert code == 5 and "Traceback" not in err and "the training pairs changed since the state was saved" in line
    assert "train.reset_loss_state = true" in line and sorted(p.name for p in (tmp_path / "r").rglob("*")) == listing
    code, _, err = run_cli(*args, "train.reset_loss_state=true")
    assert code == 0 and "per-sample loss state restarted" in " ".join(err.split())
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["sample_identity"] != saved


def test_epochs_are_numbered_from_0_on_screen_in_json_and_in_plots(shapes, tmp_path, run_cli):
    """One numbering (from 0, as metrics.jsonl, summary.json and checkpoints have always stored it)."""
    import re

    from matplotlib.figure import Figure

    from clipctl.report.compare import build_comparison
    from clipctl.report.plots import _curves
    from clipctl.report.runs import scan_runs

    args = ["train", "quickstart", *tiny_overrides(shapes, **{"train.max_steps": 0}), "--out", str(tmp_path)]
    code, _, err = run_cli(*args, "--name", "e")
    assert code == 0, err
    root = tmp_path / "e"
    evals = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    summary = json.loads((root / "summary.json").read_text())
    assert [r["epoch"] for r in evals] == [0, 1] and summary["epochs_completed"] == 2
    screen = {int(n): float(v) for n, v in re.findall(r"^epoch (\d+): .*?\bobjective=([\d.]+)", err, re.M)}
    assert screen == {r["epoch"]: pytest.approx(100 * r["val/objective"], abs=0.006) for r in evals}
    assert re.findall(r"^epoch (\d+)/1: ", err, re.M) == ["0", "1"]  # the progress lines: epoch N of 0..1
    best = max(evals, key=lambda r: r["val/objective"])["epoch"]  # the first of equals, as the trainer keeps it
    assert summary["best_epoch"] == best and f"test metrics of the best epoch ({best})" in err
    figure = Figure()
    _curves(build_comparison(scan_runs([tmp_path])), figure.add_subplot())
    (line,) = figure.axes[0].get_lines()
    assert list(line.get_xdata()) == [0, 1] and "from 0" in figure.axes[0].get_xlabel()
