"""What the run-lifecycle tests share: a tiny `shapes` per module and an uninterrupted one-epoch run to compare
resumed or restarted runs with."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.trainkit import ONE, make_tiny_shapes, tiny_recipe

from clipctl.train.trainer import TrainOptions, train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_tiny_shapes(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def straight(shapes, tmp_path_factory) -> Path:
    """An uninterrupted one-epoch run: what a run resumed or started over must equal."""
    out = tmp_path_factory.mktemp("straight")
    train(tiny_recipe(shapes, **ONE), TrainOptions(out_dir=out, name="straight"))
    return out / "straight"
