"""`model.init_from`: start from another run's checkpoint; locked towers train on cached features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from helpers.trainkit import make_tiny_shapes, tiny_recipe

from clipctl.errors import UsageError
from clipctl.run.checkpoint import load_checkpoint
from clipctl.train.components import build_components
from clipctl.train.trainer import TrainOptions, train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_tiny_shapes(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def source(shapes, tmp_path_factory) -> Path:
    """A finished 1-epoch run whose checkpoint the other runs start from."""
    out = tmp_path_factory.mktemp("runs")
    train(
        tiny_recipe(shapes, **{"train.epochs": 1, "loss.name": "clip", "loss.temperature": 0.05}),
        TrainOptions(out_dir=out, name="source"),
    )
    return out / "source"


def test_init_from_evaluates_to_the_source_metrics_before_any_update(shapes, source):
    recipe = tiny_recipe(
        shapes,
        **{
            "model.init_from": str(source),
            "model.init_projections": True,
            "loss.name": "sogclr",
            "loss.temperature": 0.05,
        },
    )
    parts = build_components(recipe, Accelerator(cpu=True), state=None, prepare_data=False)
    expected = load_checkpoint(source / "ckpt.pt")
    assert parts.tokenizer.to_json() == expected["tokenizer_json"]  # the text tower's vocabulary comes along
    metrics = parts.evaluate(parts.model, split="val")
    for key, value in expected["metrics"].items():
        if key.startswith("val/") and not key.endswith("_per_s"):
            assert metrics[key] == value, key


def test_without_init_projections_only_the_towers_are_copied(shapes, source):
    recipe = tiny_recipe(shapes, **{"model.init_from": str(source / "ckpt.pt")})
    model = build_components(recipe, Accelerator(cpu=True), state=None, prepare_data=False).model
    weights = load_checkpoint(source / "ckpt.pt")["model"]
    own = model.state_dict()
    assert all(torch.equal(own[k], weights[k]) for k in own if k.startswith(("image_tower.", "text_tower.")))
    assert not torch.equal(own["image_proj.weight"], weights["image_proj.weight"])


def _locked_run(shapes: Path, source: Path, out: Path, name: str, cached: bool) -> Path:
    recipe = tiny_recipe(
        shapes,
        **{
            "model.init_from": str(source),
            "model.lock_image": True,
            "model.lock_text": True,
            "model.cache_locked_features": cached,
            "loss.name": "sogclr",
            "loss.temperature": 0.05,
            "data.augment": False,
        },
    )
    train(recipe, TrainOptions(out_dir=out, name=name))
    return out / name


def test_cached_and_uncached_locked_tower_training_give_the_same_weights(shapes, source, tmp_path):
    cached = _locked_run(shapes, source, tmp_path, "cached", cached=True)
    plain = _locked_run(shapes, source, tmp_path, "plain", cached=False)
    a = torch.load(cached / "state" / "last.pt", weights_only=True)["model"]
    b = torch.load(plain / "state" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    assert not torch.equal(a["image_proj.weight"], load_checkpoint(source / "ckpt.pt")["model"]["image_proj.weight"])
    summaries = [json.loads((run / "summary.json").read_text()) for run in (cached, plain)]
    assert summaries[0]["steps"] == summaries[1]["steps"] == 16
    assert summaries[0]["best"]["val/objective"] == pytest.approx(summaries[1]["best"]["val/objective"], abs=1e-6)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"model.init_from": "nowhere/ckpt.pt"}, "no checkpoint at nowhere/ckpt.pt"),
        ({"model.embed_dim": 48, "model.init_projections": True}, "do not fit this recipe's [model]"),
    ],
)
def test_bad_init_from_is_one_line(shapes, source, extra, needle):
    recipe = tiny_recipe(shapes, **{"model.init_from": str(source), **extra})
    with pytest.raises(UsageError) as caught:
        build_components(recipe, Accelerator(cpu=True), state=None, prepare_data=False)
    assert needle in str(caught.value) and "\n" not in str(caught.value)
