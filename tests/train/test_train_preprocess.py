"""A non-default preprocessing record reaches every stage: training, cached tower features, validation, the final
test pass and `clipctl eval` all apply the same image transform and caption/prompt cleaning."""

from __future__ import annotations

from collections import defaultdict

import pytest
from helpers.trainkit import QUICK, make_tiny_shapes, tiny_recipe

from clipctl.data.class_folder import ClassificationDataset
from clipctl.data.datasets import PairsDataset
from clipctl.data.retrieval_json import RetrievalDataset
from clipctl.evaluate import splits
from clipctl.evaluate.checkpoint_eval import evaluate_checkpoint
from clipctl.model.preprocess import Preprocess
from clipctl.run.checkpoint import load_checkpoint
from clipctl.train.trainer import TrainOptions, train

pytestmark = pytest.mark.slow

CHOSEN = {"model.normalize": "imagenet", "model.interpolation": "bilinear", "model.text_max_words": 12}


class Recorder:
    """What each stage applied: the repr of the image transform every dataset item went through, and the keywords
    of the text cleaning given to each dataset and to the zero-shot classifier."""

    def __init__(self) -> None:
        self.stage = ""
        self.transforms: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.cleaning: dict[tuple[str, str], list[dict]] = defaultdict(list)

    def wrap_items(self, monkeypatch, cls: type) -> None:
        original = cls.__getitem__

        def getitem(dataset, key):
            self.transforms[(self.stage, cls.__name__)].add(repr(dataset.transform))
            return original(dataset, key)

        monkeypatch.setattr(cls, "__getitem__", getitem)

    def wrap_init(self, monkeypatch, cls: type) -> None:
        original = cls.__init__

        def init(dataset, *args, clean_text, **kwargs):
            self.cleaning[(self.stage, cls.__name__)].append(dict(clean_text.keywords))
            original(dataset, *args, clean_text=clean_text, **kwargs)

        monkeypatch.setattr(cls, "__init__", init)

    def wrap_classifier(self, monkeypatch) -> None:
        original = splits.zeroshot_classifier

        def classifier(*args, clean, **kwargs):
            self.cleaning[(self.stage, "prompts")].append(dict(clean.keywords))
            return original(*args, clean=clean, **kwargs)

        monkeypatch.setattr(splits, "zeroshot_classifier", classifier)


def test_a_non_default_preprocessing_is_the_same_at_every_stage(tmp_path, monkeypatch):
    shapes = make_tiny_shapes(tmp_path / "data")
    recorder = Recorder()
    for cls in (PairsDataset, RetrievalDataset, ClassificationDataset):
        recorder.wrap_items(monkeypatch, cls)
    for cls in (PairsDataset, RetrievalDataset):
        recorder.wrap_init(monkeypatch, cls)
    recorder.wrap_classifier(monkeypatch)

    recorder.stage = "train"
    recipe = tiny_recipe(shapes, **QUICK, **CHOSEN)
    train(recipe, TrainOptions(out_dir=tmp_path / "runs", name="plain"))
    recorder.stage = "train with cached features"
    locked = {"model.lock_image": True, "model.lock_text": True, "model.cache_locked_features": True}
    train(tiny_recipe(shapes, **QUICK, **CHOSEN, **locked), TrainOptions(out_dir=tmp_path / "runs", name="cached"))
    recorder.stage = "clipctl eval"
    ckpt = tmp_path / "runs" / "plain" / "ckpt.pt"
    evaluate_checkpoint(ckpt, datasets=[str(shapes / "test.json"), str(shapes / "zeroshot")], progress=False)

    expected = Preprocess(
        image_size=32,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        interpolation="bilinear",
        max_words=12,
    )
    assert recipe.preprocess() == expected
    assert Preprocess.from_record(load_checkpoint(ckpt)["preprocess"], "ckpt") == expected
    stages = {stage for stage, _ in recorder.transforms}
    assert stages == {"train", "train with cached features", "clipctl eval"}
    for stage in stages:  # every stage read training pairs (or cached them), retrieval and zero-shot images
        if stage != "clipctl eval":
            assert (stage, "PairsDataset") in recorder.transforms
        assert (stage, "RetrievalDataset") in recorder.transforms
        assert (stage, "ClassificationDataset") in recorder.transforms
    applied = set().union(*recorder.transforms.values())
    assert len(applied) == 1, applied  # one transform everywhere (the tiny recipe does not augment)
    assert "mean=(0.485, 0.456, 0.406)" in applied.pop()
    cleaning = [keywords for calls in recorder.cleaning.values() for keywords in calls]
    assert {(stage, what) for stage, what in recorder.cleaning} >= {
        ("train", "PairsDataset"),
        ("train", "RetrievalDataset"),
        ("train", "prompts"),
        ("train with cached features", "PairsDataset"),
        ("clipctl eval", "RetrievalDataset"),
        ("clipctl eval", "prompts"),
    }
    assert all(k == {"max_words": 12, "lowercase": True, "strip_punctuation": True} for k in cleaning), cleaning
