"""`train.precision = auto` on the CPU: bf16 only where the CPU has bf16 matrix instructions and bench/precision.py
measured the tower set faster in it; the launcher's choice and an explicit recipe value still win; the dry run and
`clipctl doctor` say what auto chose and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.paths import REPO_ROOT
from helpers.trainkit import make_tiny_shapes, pretend_cpu, tiny_overrides

from clipctl.model import cpu_precision
from clipctl.model.cpu_precision import Measured
from clipctl.recipe import TrainConfig
from clipctl.train.devices import LAUNCH_PRECISION, resolve_precision

AUTO = {"train.precision": "auto", "train.device": "auto"}  # the quickstart names cpu and float32 itself
NO_MATRIX = "this CPU has no bf16 matrix instructions"
MEASURED = {  # what a benchmark could have recorded: fast and equal, slow, fast but not compared, fast but worse
    "test_resnet": Measured(1.8, equal_metrics=True),
    "resnet50": Measured(1.02, equal_metrics=True),
    "vit_b_16": Measured(1.5, equal_metrics=None),
    "convnext_tiny": Measured(1.5, equal_metrics=False),
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_tiny_shapes(tmp_path_factory.mktemp("data"))


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU with bf16 matrix instructions and a benchmark that measured one fast and one slow tower set."""
    pretend_cpu(monkeypatch, avx512_bf16=True)
    monkeypatch.setattr(cpu_precision, "CPU_BF16", MEASURED)


def auto_on_cpu(tower: str):
    return resolve_precision(TrainConfig(precision="auto"), on_cuda=False, cpu_tower=tower)


@pytest.mark.parametrize("tower", [*MEASURED, "resnet18"])
def test_a_cpu_without_bf16_matrix_instructions_trains_every_tower_in_float32(monkeypatch, tower):
    pretend_cpu(monkeypatch, avx512_bf16=False)
    monkeypatch.setattr(cpu_precision, "CPU_BF16", MEASURED)
    choice = auto_on_cpu(tower)
    assert choice.value == "no" and NO_MATRIX in choice.source and choice.source.startswith("auto (")


@pytest.mark.usefixtures("bf16_cpu")
@pytest.mark.parametrize(
    ("tower", "value", "why"),
    [
        ("test_resnet", "bf16", "bf16 measured 1.80x float32's step speed for image tower 'test_resnet', at float32's"),
        ("resnet50", "no", "bf16 measured 1.02x float32's step speed for image tower 'resnet50', under 1.1x"),
        ("vit_b_16", "no", "1.50x float32's step speed for image tower 'vit_b_16', but its short-run metrics were not"),
        ("convnext_tiny", "no", "but its short-run objective differed from float32's"),
        ("resnet18", "no", "bf16 not benchmarked on the CPU for image tower 'resnet18'"),
    ],
)
def test_a_bf16_cpu_trains_in_bf16_only_the_tower_sets_measured_faster(tower, value, why):
    choice = auto_on_cpu(tower)
    assert choice.value == value and why in choice.source


@pytest.mark.usefixtures("bf16_cpu")
def test_the_launcher_and_the_recipe_still_win_over_the_cpu_decision(monkeypatch):
    monkeypatch.setenv(LAUNCH_PRECISION, "no")
    assert auto_on_cpu("test_resnet").value == "no"
    monkeypatch.delenv(LAUNCH_PRECISION)
    explicit = resolve_precision(TrainConfig(precision="no"), on_cuda=False, cpu_tower="test_resnet")
    assert explicit.value == "no" and explicit.source == "recipe (train.precision)"


@pytest.mark.parametrize(("avx512_bf16", "amx"), [(True, False), (False, True), (False, False)])
def test_the_probe_counts_avx512_bf16_or_amx(monkeypatch, avx512_bf16, amx):
    pretend_cpu(monkeypatch, avx512_bf16, amx)
    assert cpu_precision.cpu_bf16_matmul() is (avx512_bf16 or amx)


def test_off_the_cpu_without_cuda_auto_stays_float32(bf16_cpu):
    choice = resolve_precision(TrainConfig(precision="auto"), on_cuda=False, cpu_tower=None)
    assert choice.value == "no" and "off the CPU and CUDA" in choice.source


def test_the_package_table_holds_the_recorded_benchmark():
    """The figures auto follows are the ones bench/precision.py recorded (rounded), for every tower set it ran."""
    recorded = json.loads((REPO_ROOT / "bench" / "results" / "precision.json").read_text())
    towers = {m["image_model"]: (kind, m["speedup_vs_fp32"]["bf16"]) for kind, m in recorded["models"].items()}
    assert set(towers) == set(cpu_precision.CPU_BF16)
    for tower, (kind, speedup) in towers.items():
        # only the quickstart is trained for the short-run metrics; other tower sets are not compared
        equal = recorded["metrics"]["test_equal"] if kind == "quickstart" else None
        assert cpu_precision.CPU_BF16[tower] == Measured(pytest.approx(speedup, abs=0.005), equal)


@pytest.mark.parametrize("matrix", [True, False])
def test_dry_run_says_what_auto_chose_on_the_cpu_and_why(shapes, run_cli, bf16_cpu, monkeypatch, matrix):
    pretend_cpu(monkeypatch, avx512_bf16=matrix)
    code, out, err = run_cli("train", "quickstart", *tiny_overrides(shapes, **AUTO), "--dry-run", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["device"] == "cpu" and plan["precision"] == ("bf16" if matrix else "no")
    expected = "bf16 measured 1.80x float32's step speed for image tower 'test_resnet'" if matrix else NO_MATRIX
    assert plan["precision_from"].startswith("auto (") and expected in plan["precision_from"]


@pytest.mark.parametrize("matrix", [True, False])
def test_doctor_says_what_auto_trains_in_on_this_cpu(run_cli, bf16_cpu, monkeypatch, matrix):
    pretend_cpu(monkeypatch, avx512_bf16=matrix)
    code, out, _ = run_cli("doctor", "--json")
    devices = json.loads(out)["devices"]
    assert code == 0 and devices["cpu_bf16_matmul"] is matrix
    if matrix:
        expected = "test_resnet bf16 (1.80x measured), resnet50 no (1.02x measured), vit_b_16 no (1.50x measured)"
    else:
        expected = f"no (float32) for every tower: {NO_MATRIX}"
    assert devices["cpu_auto_precision"].startswith(expected)
    code, _, err = run_cli("doctor")
    assert code == 0 and "cpu_auto_precision" in err and ("test_resnet bf16" in err) is matrix
