"""One briefly trained quickstart model (test_resnet + 2-layer DistilBERT, wordpiece tokenizer) on tiny shapes,
shared by the interop tests, and its exports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.trainkit import TINY_SHAPES, make_tiny_shapes, tiny_recipe

from clipctl.interop.export import export_model
from clipctl.train.trainer import TrainOptions, train


@dataclass(frozen=True)
class Trained:
    run: Path
    ckpt: Path
    data_root: Path  # holds shapes/ (with its manifest), for `clipctl eval --shapes`
    shapes: Path


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory) -> Trained:
    root = tmp_path_factory.mktemp("interop-data")
    shapes = make_tiny_shapes(root, TINY_SHAPES)
    runs = tmp_path_factory.mktemp("interop-runs")
    train(tiny_recipe(shapes, **{"train.epochs": 1, "train.max_steps": 3}), TrainOptions(out_dir=runs, name="q"))
    return Trained(runs / "q", runs / "q" / "ckpt.pt", root, shapes)


@pytest.fixture(scope="session")
def quickstart_exports(quickstart, tmp_path_factory) -> dict[str, Path]:
    """The quickstart model exported in both layouts."""
    folder = tmp_path_factory.mktemp("interop-exports")
    return {fmt: export_model(quickstart.run, folder / fmt, fmt).out for fmt in ("open_clip", "safetensors")}
