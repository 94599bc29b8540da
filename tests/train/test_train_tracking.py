"""Trackers through Accelerate's `log_with`: TensorBoard as before (also under its older key), W&B offline and
MLflow on a local file store, each holding the same scalars at the same updates; a missing extra is one line."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.output import assert_one_error_line
from helpers.trackers import mlflow_scalars, tensorboard_scalars, wandb_offline_scalars
from helpers.trainkit import ONE, QUICK, make_tiny_shapes, tiny_recipe, train_args

from clipctl.errors import InterruptedRun
from clipctl.train.tracking import mlflow_name
from clipctl.train.trainer import TrainOptions, train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_tiny_shapes(tmp_path_factory.mktemp("data"))


@pytest.fixture
def offline_trackers(tmp_path, monkeypatch) -> Iterator[str]:
    """W&B offline and quiet, MLflow on a file store in tmp: nothing leaves the machine. Returns the MLflow URI."""
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_DIR": str(tmp_path / "wandb-dir"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(),
        "MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3 asks file stores to opt in
    }.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "wandb-dir").mkdir()
    wandb = pytest.importorskip("wandb")
    wandb.teardown()  # wandb reads its environment once per process: start afresh with this test's
    yield (tmp_path / "mlruns").as_uri()
    wandb.teardown()


def approx(series: dict[str, list[tuple[int, float]]]) -> dict[str, list]:
    """TensorBoard stores float32: compare the others to its precision."""
    close = {"rel": 1e-6, "nan_ok": True}
    return {key: [(step, pytest.approx(value, **close)) for step, value in points] for key, points in series.items()}


def test_wandb_and_mlflow_log_the_same_scalars_as_tensorboard(shapes, tmp_path, offline_trackers):
    recipe = tiny_recipe(shapes, **QUICK, **{"tracking.report_to": ["tensorboard", "wandb", "mlflow"]})
    recipe.tracking.project = "clipctl-test"
    summary = train(recipe, TrainOptions(out_dir=tmp_path, name="t"))
    assert summary["status"] == "completed"
    board = tensorboard_scalars(tmp_path / "t" / "tb")
    assert {"train/loss", "train/lr", "eval/val/objective", "test/tr@1"} <= set(board)
    assert [step for step, _ in board["train/loss"]] == [2] and [s for s, _ in board["eval/val/objective"]] == [2]
    wandb = wandb_offline_scalars(tmp_path / "wandb-dir")
    assert set(wandb) == set(board) and approx(board) == wandb
    mlflow = mlflow_scalars(offline_trackers, "clipctl-test")
    assert set(mlflow) == {mlflow_name(tag) for tag in board} and "test/tr_at_1" in mlflow
    assert approx({mlflow_name(tag): points for tag, points in board.items()}) == mlflow


@pytest.mark.parametrize("spelling", [{"tracking.tensorboard": True}, {"tracking.report_to": ["tensorboard"]}])
def test_tensorboard_keeps_its_folder_and_names_under_both_spellings(shapes, tmp_path, spelling):
    train(tiny_recipe(shapes, **QUICK, **spelling), TrainOptions(out_dir=tmp_path, name="tb"))
    board = tensorboard_scalars(tmp_path / "tb" / "tb")
    assert board["train/loss"][0][0] == 2 and "eval/val/tr@1" in board and "test/acc@1" in board
    assert not (tmp_path / "tb" / "wandb").exists()


def test_no_tracker_unless_asked(shapes, tmp_path):
    train(tiny_recipe(shapes, **QUICK), TrainOptions(out_dir=tmp_path, name="none"))
    assert not (tmp_path / "none" / "tb").exists() and not (tmp_path / "none" / "wandb").exists()


@pytest.mark.parametrize(("tracker", "extra"), [("wandb", "clipctl[wandb]"), ("mlflow", "clipctl[mlflow]")])
def test_a_missing_extra_is_one_line_naming_the_install(shapes, tmp_path, monkeypatch, run_cli, tracker, extra):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == tracker else real(name, *a))
    code, _, err = run_cli(*train_args(shapes, tmp_path, "x", **{"tracking.report_to": [tracker]}))
    assert code == 2 and f"pip install {extra}" in err and "tracking.report_to" in err, err
    assert_one_error_line(err)
    assert not (tmp_path / "x").exists()


def test_a_resumed_run_continues_its_wandb_run(shapes, tmp_path, offline_trackers):
    recipe = tiny_recipe(shapes, **ONE, **{"tracking.report_to": ["wandb"]})
    with pytest.raises(InterruptedRun):
        train(recipe, TrainOptions(out_dir=tmp_path, name="w", stop_after_steps=3))
    run_id = json.loads((tmp_path / "w" / "meta.json").read_text())["run_id"]
    train(recipe, TrainOptions(out_dir=tmp_path, name="w", resume="auto"))
    assert json.loads((tmp_path / "w" / "meta.json").read_text())["run_id"] == run_id
    starts = sorted((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*"))
    # wandb names each start's folder offline-run-<second>-<run id>, adding "-1" when two starts share a second
    assert len(starts) == 2 and all(re.search(rf"-{run_id}(-\d+)?$", start.name) for start in starts)
