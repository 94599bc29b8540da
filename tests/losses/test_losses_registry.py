"""A loss is its own config model plus its class, made known by one registration: a loss defined only in
this test is validated in recipes, rejected where it does not apply, and trains a run end to end."""

from __future__ import annotations

import json
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from helpers.trainkit import make_tiny_shapes, tiny_recipe
from pydantic import Field

from clipctl.errors import UsageError
from clipctl.losses import LOSSES, build_loss, register_loss, registry
from clipctl.losses.base import Batch, ContrastiveLoss, LossOutput
from clipctl.losses.config import LossConfig
from clipctl.recipe import validate_recipe
from clipctl.train.trainer import TrainOptions, train


class ToyConfig(LossConfig):
    """Mini-batch InfoNCE with a fixed logit scale: the smallest loss with a key of its own."""

    name: Literal["toy"] = "toy"
    scale: float = Field(20.0, gt=0)


class ToyLoss(ContrastiveLoss):
    name = "toy"

    def _compute(self, batch: Batch, epoch: int, step: int, with_stats: bool) -> LossOutput:
        logits = (batch.x @ batch.t_all.T) * self.cfg.scale
        loss = 0.5 * (F.cross_entropy(logits, batch.pos) + F.cross_entropy(logits.T, batch.pos))
        return LossOutput(loss, {"scale": float(self.cfg.scale)} if with_stats else {})


@pytest.fixture
def toy(monkeypatch):
    """The registry as it was, plus the toy loss, for this test only."""
    monkeypatch.setattr(registry, "_LOSSES", dict(registry._LOSSES))
    register_loss(ToyConfig, ToyLoss)


def test_a_registered_loss_is_a_recipe_loss(toy):
    recipe = validate_recipe({"loss": {"name": "toy", "scale": 5.0}})
    assert isinstance(recipe.loss, ToyConfig) and recipe.to_dict()["loss"] == {"name": "toy", "scale": 5.0}
    assert list(LOSSES)[-1] == "toy" and LOSSES["toy"] is ToyLoss
    assert isinstance(build_loss({"name": "toy"}, num_samples=4), ToyLoss)
    with pytest.raises(UsageError, match=r"loss.rho_I: not used by loss 'toy' \(used by isogclr, .*fastclip_v3\)"):
        validate_recipe({"loss": {"name": "toy", "rho_I": 1.0}})
    with pytest.raises(UsageError, match=r"loss.scale: not used by loss 'sogclr' \(used by toy\)"):
        validate_recipe({"loss": {"name": "sogclr", "scale": 1.0}})
    with pytest.raises(UsageError, match=r"loss.scale = -1.0: Input should be greater than 0"):
        validate_recipe({"loss": {"name": "toy", "scale": -1.0}})
    with pytest.raises(UsageError, match=r"'cyclip' or 'toy'"):
        validate_recipe({"loss": {"name": "simclr"}})


def test_a_registered_loss_trains_a_run(toy, data_root, tmp_path):
    recipe = tiny_recipe(make_tiny_shapes(data_root), **{"loss.name": "toy", "loss.scale": 10.0, "train.epochs": 1})
    summary = train(recipe, TrainOptions(out_dir=tmp_path, name="toy"))
    assert summary["status"] == "completed" and summary["steps"] == 8
    records = [json.loads(line) for line in (tmp_path / "toy" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "train"]
    assert steps and all(r["scale"] == 10.0 and torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    assert "scale = 10.0" in (tmp_path / "toy" / "recipe.toml").read_text()
