"""The preprocessing a model was trained with, as one record that travels with it into its checkpoint and exports.

Why a record on the model: the weights only mean something for the pixels and words they were trained on, so
training, cached tower features, validation, zero-shot prompts, `clipctl eval` and every export build their image
transform and text cleaning from this one record (`image_transform`, `text_cleaner`) and never from scattered
recipe keys. A checkpoint written before the record existed gets `Preprocess.from_settings` of its embedded recipe:
CLIP mean/std, bicubic and the report's caption cleaning unless that recipe said otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clipctl.data.text import MAX_CAPTION_WORDS, clean_caption
from clipctl.data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Interpolation
from clipctl.data.transforms import eval_transform as _eval_transform
from clipctl.data.transforms import train_transform as _train_transform
from clipctl.errors import UsageError
from clipctl.model.config import ModelConfig

# The named normalisations `model.normalize` offers: (mean, std) per RGB channel.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "clip": (CLIP_MEAN, CLIP_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
Triple = tuple[float, float, float]


class Preprocess(BaseModel):
    """What a model's inputs go through: image size, mean/std and interpolation; caption case, punctuation and
    length (in words; the token length is the tokenizer's)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    image_size: int = Field(256, ge=16, le=1024)
    mean: Triple = CLIP_MEAN
    std: Triple = CLIP_STD
    interpolation: Interpolation = "bicubic"
    lowercase: bool = True
    strip_punctuation: bool = True
    max_words: int = Field(MAX_CAPTION_WORDS, ge=1, le=512)

    @classmethod
    def from_settings(cls, model: ModelConfig, image_size: int) -> Preprocess:
        """The record of a recipe's [model] settings (unset: today's defaults) at `data.image_size`."""
        mean, std = NORMALIZATIONS[model.normalize or "clip"]
        return cls(
            image_size=image_size,
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            interpolation=model.interpolation or "bicubic",
            lowercase=True if model.text_lowercase is None else model.text_lowercase,
            strip_punctuation=True if model.text_strip_punctuation is None else model.text_strip_punctuation,
            max_words=model.text_max_words or MAX_CAPTION_WORDS,
        )

    @classmethod
    def from_record(cls, record: Any, where: str) -> Preprocess:
        """The record as a checkpoint or an export stored it (JSON lists for the triples)."""
        if not isinstance(record, dict):
            raise UsageError(f"{where}: the preprocessing record is not a table; re-create the file")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}
        try:
            return cls.model_validate(fixed)
        except ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise UsageError(f"{where}: preprocessing record: {key}: {first['msg']}; re-create the file") from None

    def to_record(self) -> dict[str, Any]:
        """Plain JSON/pickle-safe values (lists for the triples)."""
        return self.model_dump(mode="json")


def image_transform(preprocess: Preprocess, augment: bool = False) -> Callable:
    """The image transform of every stage: `augment=True` only for training with `data.augment`; training without
    it, cached features, validation, `clipctl eval` and exports get the deterministic one."""
    settings = (preprocess.mean, preprocess.std, preprocess.interpolation)
    if augment:
        return _train_transform(preprocess.image_size, True, *settings)
    return _eval_transform(preprocess.image_size, *settings)


def text_cleaner(preprocess: Preprocess) -> Callable[[str], str]:
    """The text cleaning of every stage: training and evaluation captions, zero-shot prompts (a picklable function,
    for DataLoader workers)."""
    return partial(
        clean_caption,
        max_words=preprocess.max_words,
        lowercase=preprocess.lowercase,
        strip_punctuation=preprocess.strip_punctuation,
    )
