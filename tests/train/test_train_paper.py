"""The report's towers (ResNet-50 + DistilBERT architectures, not pretrained) train and evaluate end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers.trainkit import make_tiny_shapes, tiny_recipe

from clipctl.data.shapes import ShapesConfig
from clipctl.train.trainer import TrainOptions, train

PAPER = {
    "model.image_model": "resnet50",
    "model.image_pretrained": False,
    "model.text_model": "distilbert-base-uncased",
    "model.text_pretrained": False,
    "model.text_config": {},
    "model.text_pooling": "cls",
    "model.embed_dim": 256,
    "data.image_size": 224,
    "data.max_text_len": 30,
    "train.batch_size": 4,
    "train.epochs": 1,
    "train.max_steps": 2,
    "eval.batch_size": 8,
}


def few_classes(source: Path, target: Path, count: int = 4) -> Path:
    """A zero-shot folder with the first `count` classes only: ResNet-50 at 224 px is slow on a CPU."""
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())[:count]
    for name in classes:
        shutil.copytree(source / name, target / name)
    names = (source / "classnames.txt").read_text().splitlines()[:count]
    (target / "classnames.txt").write_text("".join(n + "\n" for n in names))
    shutil.copy(source / "templates.txt", target / "templates.txt")
    return target


@pytest.mark.slow
def test_paper_towers_two_steps_and_one_eval_at_224px(tmp_path):
    shapes = make_tiny_shapes(
        tmp_path / "data",
        ShapesConfig(train_size=100, image_size=224, eval_images=4, zeroshot_val_per_class=1, zeroshot_per_class=1),
    )
    zeroshot = str(few_classes(shapes / "zeroshot", tmp_path / "zeroshot"))
    recipe = tiny_recipe(
        shapes,
        **PAPER,
        **{"eval.val_zeroshot": zeroshot, "eval.test_zeroshot": zeroshot, "eval.allow_test_selection": True},
    )  # one tiny set for both
    summary = train(recipe, TrainOptions(out_dir=tmp_path, name="paper"))
    assert summary["status"] == "completed" and summary["steps"] == 2
    evals = [json.loads(line) for line in (tmp_path / "paper" / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in evals if r["type"] != "train"] == ["eval", "test"]
    assert 0 <= summary["test"]["objective"] <= 1
