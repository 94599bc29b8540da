"""The benchmark tooling: target checks, the `make bench` summary, every script in a tiny run, the GPU check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import REPO_ROOT
from helpers.trainkit import QUICK, make_tiny_shapes, tiny_overrides

BENCH = REPO_ROOT / "bench"
sys.path.insert(0, str(BENCH))

from _common import check  # noqa: E402
from _summary import benchmark_names, summary_rows  # noqa: E402

# Each script with arguments that make it finish in seconds; the real run is `make bench`.
TINY_ARGS = {
    "cached_features": ["--train-size", "256", "--batch", "32", "--rounds", "1"],
    "data_loading": ["--images", "320", "--batch-size", "32", "--batches", "2", "--workers", "0", "1"],
    "embed_speed": ["--images", "200", "--repeats", "1"],
    "eval_speed": [
        "--images",
        "300",
        "--captions",
        "1500",
        "--dim",
        "32",
        "--chunk-size",
        "128",
        "--repeats",
        "1",
        "--scenarios",
        "random",
    ],
    "loss_overhead": ["--sizes", "64", "512", "--repeats", "1"],
    "precision": ["--models", "quickstart", "--batch", "8", "--steps", "1", "--rounds", "1"],
    "state_sharding": ["--samples", "64", "--batch", "16", "--steps", "1"],
    "stream_bench": ["--samples", "2000", "--shard-size", "200", "--loader-samples", "256", "--batch", "32"],
    "train_throughput": [
        "--models",
        "quickstart",
        "--batch",
        "8",
        "--steps",
        "1",
        "--rounds",
        "1",
        "--matmul-size",
        "256",
    ],
    "tune_overhead": ["--observed", "13", "--repeats", "1"],
}
# Scripts that train the quickstart: tiny arguments over the tiny shapes (made once for the module).
TRAINING_ARGS = {"precision_auto": lambda shapes: ["--seeds", "0", "1", "--set", *tiny_overrides(shapes, **QUICK)]}
# Scripts whose tiny run is a test of its own below (it checks more than the generic one would).
OWN_TEST = {
    "profile_step": "test_profile_step_keeps_each_label_and_shows_the_fused_optimizer",
    "race_open_clip": "test_race_open_clip_trainer_end_to_end",
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_tiny_shapes(tmp_path_factory.mktemp("data"))


def run_script(script: Path, args: list[str], results: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "CLIPCTL_BENCH_RESULTS": str(results), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [str(script), *args] if script.suffix == ".sh" else [sys.executable, str(script), *args],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


@pytest.mark.parametrize(
    ("value", "op", "target", "status"),
    [
        (1.2, "<=", 1.5, "met"),
        (1.5, "<=", 1.5, "met"),
        (1.6, "<=", 1.5, "missed"),
        (0.4, ">=", 0.3, "met"),
        (0.2, ">=", 0.3, "missed"),
        (None, ">=", 0.3, "not run"),
    ],
)
def test_check_status(value, op, target, status):
    assert check("m", value, op, target)["status"] == status


def test_summary_reads_checks_and_flags_missing_results(tmp_path):
    (tmp_path / "loss_overhead.json").write_text(
        json.dumps(
            {
                "measured_at": "2026-11-29T00:00:00+00:00",
                "checks": [check("loss / clip", 1.4, "<=", 1.5), check("memory", 2048.0, "<=", 1024, unit="MB")],
            }
        )
    )
    (tmp_path / "eval_speed.json").write_text(json.dumps({"targets": {"old": True}}))  # written before checks existed
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "train_throughput.json").write_text(
        json.dumps({"checks": [check("MFU", 0.45, ">=", 0.3, unit="fraction")]})
    )
    (tmp_path / "gpu" / "quickstart.json").write_text(json.dumps({"status": "completed"}))  # a run summary: no targets
    rows = {(row[0], row[1]): row for row in summary_rows(tmp_path)}
    assert rows["loss_overhead", "loss / clip"][2:5] == ["1.40x", "<= 1.50x", "met"]
    assert rows["loss_overhead", "memory"][2:5] == ["2048 MB", "<= 1024 MB", "missed"]
    assert rows["gpu/train_throughput", "MFU"][2:5] == ["45.0%", ">= 30.0%", "met"]
    not_run = {name for (name, _), row in rows.items() if row[4] == "not run"}
    assert not_run == set(benchmark_names()) - {"loss_overhead"}
    assert "gpu/quickstart" not in {name for name, _ in rows}


def test_summary_script_prints_the_table(tmp_path):
    (tmp_path / "tune_overhead.json").write_text(
        json.dumps({"checks": [check("ask + tell", 0.002, "<=", 0.01, unit="fraction")]})
    )
    done = run_script(BENCH / "_summary.py", ["--results", str(tmp_path)], tmp_path, COLUMNS="200")
    assert done.returncode == 0, done.stderr
    assert "ask + tell" in done.stderr and "0.2%" in done.stderr
    assert done.stdout.strip() == f"1 met, 0 missed, {len(benchmark_names()) - 1} not run"


def test_every_benchmark_has_tiny_arguments():
    assert set(TINY_ARGS) | set(TRAINING_ARGS) | set(OWN_TEST) == set(benchmark_names())
    assert all(callable(globals().get(test)) for test in OWN_TEST.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted([*TINY_ARGS, *TRAINING_ARGS]))
def test_benchmark_runs_and_records_its_targets(name, tmp_path, request):
    args = TINY_ARGS[name] if name in TINY_ARGS else TRAINING_ARGS[name](request.getfixturevalue("shapes"))
    done = run_script(BENCH / f"{name}.py", args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / f"{name}.json").read_text())
    assert payload["benchmark"] == name and payload["measured_at"]
    assert payload["checks"] and all(c["status"] in ("met", "missed") for c in payload["checks"])
    assert all(isinstance(c["value"], float) for c in payload["checks"])
    assert all(c["value"] > 0 if c["unit"] == "x" else c["value"] >= 0 for c in payload["checks"])


@pytest.mark.slow
def test_gpu_check_cpu_dry_run(tmp_path):
    out = tmp_path / "out"
    done = run_script(BENCH / "gpu_check.sh", ["--cpu-dry-run"], tmp_path, OUT=str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    throughput = json.loads((out / "train_throughput.json").read_text())
    paper = throughput["models"]["paper"]
    assert set(paper["samples_per_s"]) == {"clip", "isogclr_new"} and paper["ratio_vs_clip"]["clip"] == 1.0
    assert paper["model_flops_per_sample"] > 0 and throughput["fp32_matmul_flops"] > 0
    assert throughput["device"] == "cpu" and "transformers" in throughput["versions"]
    assert {c["measure"].split(",")[0] for c in throughput["checks"]} == {"GCL / CLIP step", "MFU"}
    loading = json.loads((out / "data_loading.json").read_text())
    assert set(loading["data_wait_share"]) == {"0", "1"} and loading["step_device"] == "cpu"
    assert [c["measure"].split(",")[0] for c in loading["checks"]] == ["data wait / paper step"]
    summary = json.loads((out / "quickstart_cpu_dry_run.json").read_text())  # the full fit: train, eval, test
    assert summary["status"] == "completed" and summary["steps"] == 8 and set(summary["test"]) >= {"tr@1", "acc@1"}
    meta = json.loads((out / "quickstart_cpu_dry_run_meta.json").read_text())
    assert meta["device"] == "cpu" and meta["precision"] == "bf16" and "torch" in meta["versions"]
    assert not list((REPO_ROOT / "bench" / "results" / "gpu").glob("quickstart_cpu_dry_run*"))


def test_gpu_check_refuses_a_bad_option_and_a_missing_gpu(tmp_path):
    bad = run_script(BENCH / "gpu_check.sh", ["--fast"], tmp_path)
    assert bad.returncode == 2 and "unknown option '--fast'" in bad.stderr and len(bad.stderr.splitlines()) == 1
    no_gpu = run_script(BENCH / "gpu_check.sh", [], tmp_path, OUT=str(tmp_path / "out"), CUDA_VISIBLE_DEVICES="")
    assert no_gpu.returncode == 3 and "no CUDA device visible" in no_gpu.stderr and "Traceback" not in no_gpu.stderr
    assert not list((tmp_path / "out").glob("*.json"))


@pytest.mark.slow
def test_profile_step_keeps_each_label_and_shows_the_fused_optimizer(tmp_path):
    """`--label before` (the per-tensor optimizer) and then `--label after` (the trainer's): both kept in one file,
    shares summing to one, and the fused kernel dispatching fewer ops than the per-tensor loop."""
    tiny = ["--losses", "isogclr_new", "--precisions", "auto", "--batch", "8", "--steps", "1", "--top", "4"]
    for extra in (["--optimizer", "per-tensor", "--label", "before"], ["--label", "after", "--finding", "fewer ops"]):
        done = run_script(BENCH / "profile_step.py", [*tiny, *extra], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "profile_step.json").read_text())
    before, after = payload["profiles"]["before"], payload["profiles"]["after"]
    assert before["optimizer"] == "per-tensor" and after["finding"] == "fewer ops"
    assert set(before["profiles"]) == set(after["profiles"]) == {"isogclr_new auto"}
    for key, profile in after["profiles"].items():
        old = before["profiles"][key]
        assert sum(profile["group_share"].values()) == pytest.approx(1.0)
        assert set(profile["group_share"]) == {"image tower", "text tower", "loss", "optimizer", "other"}
        assert profile["group_share"]["image tower"] > 0.1 and profile["group_share"]["text tower"] > 0.1
        assert profile["group_share"]["loss"] > 0 and len(profile["top_self_cpu"]) == 4
        assert old["optimizer_path"]["fused"] is None and profile["optimizer_path"]["fused"] is True
        assert profile["aten_calls_per_step"]["optimizer"] < old["aten_calls_per_step"]["optimizer"] / 2
    assert [c["measure"].endswith("(after)") for c in payload["checks"]] == [True]


@pytest.mark.parametrize(
    ("bf16", "clipctl", "open_clip"), [(True, ("bf16", True), "amp_bf16"), (False, ("fp32", False), "fp32")]
)
def test_race_best_precision_follows_the_cpus_bf16_support(monkeypatch, bf16, clipctl, open_clip):
    import race_open_clip

    monkeypatch.setattr(race_open_clip, "cpu_bf16_matmul", lambda: bf16)
    best = race_open_clip.precision_settings("best")
    assert (best["clipctl"]["autocast"], best["clipctl"]["channels_last"]) == clipctl
    assert best["open_clip"]["precision"] == open_clip
    fp32 = race_open_clip.precision_settings("fp32")
    assert fp32["clipctl"] == {"autocast": "fp32", "channels_last": False} and fp32["open_clip"]["precision"] == "fp32"


def test_race_refuses_a_trainer_race_it_cannot_run(tmp_path, monkeypatch, capsys):
    """No shapes folder, too few pairs, no pandas: exit 2 with one line naming the fix, before anything runs."""
    import importlib.util

    import race_open_clip

    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "train.json").write_text(json.dumps([{"image": "a.png", "caption": "a"}] * 10))
    cases = [
        (["--shapes", str(tmp_path / "none")], "none/train.json: not there; run `clipctl data fetch shapes`"),
        (["--shapes", str(tmp_path / "shapes"), "--batch", "4", "--trainer-steps", "3"], "fewer pairs than"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as stop:
            race_open_clip.parse_args(args)
        assert stop.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit) as stop:
        race_open_clip.parse_args(["--shapes", str(tmp_path / "shapes")])
    assert stop.value.code == 2 and "needs pandas: pip install pandas" in capsys.readouterr().err
    assert race_open_clip.parse_args(["--skip-trainer", "--shapes", str(tmp_path / "none")]).skip_trainer


def test_race_generates_its_shapes_when_the_data_root_has_too_few(tmp_path, monkeypatch):
    import race_open_clip

    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "train.json").write_text(json.dumps([{"image": "a.png", "caption": "a"}] * 10))
    monkeypatch.setenv("CLIPCTL_DATA", str(tmp_path))
    assert race_open_clip.parse_args(["--batch", "5", "--trainer-steps", "2"]).shapes == tmp_path / "shapes"
    assert race_open_clip.parse_args(["--batch", "5", "--trainer-steps", "3"]).shapes is None  # generated in the run


def test_race_reads_open_clips_step_log_and_leaves_out_the_warm_up(tmp_path):
    import race_open_clip

    log = tmp_path / "out.log"
    lines = [
        f"2026-12-05,07:00:0{i} | INFO | Train Epoch: 0 [ {8 * i}/24 (33%)] Data (t): 0.010 Batch (t): 0.100, "
        f"{speed}/s, {speed}/s/gpu LR: 0.000100 Logit Scale: 4.605 Loss: 2.0794 (2.0794)"
        for i, speed in enumerate(["8.00000", "80.0000", "1.60000e+02"])
    ]
    log.write_text("\n".join(lines))
    speeds = race_open_clip.open_clip_step_speeds(log)
    assert speeds == [8.0, 80.0, 160.0]
    steady = race_open_clip.steady(speeds, batch=8, wall=3.0, warmup=1)
    assert steady["samples_per_s"] == 120.0 and steady["first_step_seconds"] == 1.0
    assert steady["startup_and_teardown_seconds"] == pytest.approx(3.0 - 1.0 - 0.1 - 0.05)


@pytest.mark.slow
def test_race_open_clip_trainer_end_to_end(tmp_path):
    """Both trainers on a tiny shapes folder: every step logged on each side, no evaluation, ratios recorded."""
    from helpers.trainkit import make_tiny_shapes

    shapes = make_tiny_shapes(tmp_path / "data")
    args = ["--precisions", "fp32", "--batch", "8", "--steps", "1", "--rounds", "1", "--trainer-steps", "3"]
    args += ["--trainer-rounds", "1", "--warmup-steps", "1", "--workers", "0", "--shapes", str(shapes)]
    done = run_script(BENCH / "race_open_clip.py", args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "race_open_clip.json").read_text())
    step = payload["model_step"]["fp32"]
    assert max(step["feature_difference_fp32"].values()) <= 1e-5  # the same towers on both sides
    assert step["ratio"] == pytest.approx(step["samples_per_s"]["clipctl"] / step["samples_per_s"]["open_clip"])
    trainer = payload["trainer"]["fp32"]
    for side in ("clipctl", "open_clip"):
        (run,) = trainer["runs"][side]
        assert run["steps_logged"] == 3 and run["samples_per_s"] > 0 and run["startup_and_teardown_seconds"] > 0
    assert trainer["settings"]["open_clip"]["precision"] == "fp32" and payload["loadavg_before"]
    assert [c["measure"].split(",")[0] for c in payload["checks"]] == [
        "clipctl / open_clip model step",
        "clipctl / open_clip trainer end to end",
    ]
    assert all(c["status"] in ("met", "missed") for c in payload["checks"])
