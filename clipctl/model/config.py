"""The recipe's [model] section: which towers, how they start, what stays locked (read by model/ and train/)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from clipctl.schema import Section


class ModelConfig(Section):
    image_model: str = "resnet50"
    image_pretrained: bool = True
    image_checkpoint: str = ""
    image_kwargs: dict[str, Any] = Field(default_factory=dict)  # extra timm.create_model kwargs
    text_model: str = "distilbert-base-uncased"
    text_pretrained: bool = True
    text_config: dict[str, Any] = Field(default_factory=dict)  # from-scratch config overrides
    text_pooling: Literal["cls", "mean"] = "cls"
    tokenizer: str = "auto"  # auto: the text model's; "wordpiece": trained on the training captions
    vocab_size: int = Field(8000, ge=100, le=200_000)
    embed_dim: int = Field(256, ge=8, le=4096)
    grad_checkpointing: bool = False
    lock_image: bool = False
    lock_text: bool = False
    channels_last: bool = False
    init_from: str = ""  # a clipctl ckpt.pt (or its run directory): start both towers from its weights
    init_projections: bool = False  # with init_from: start the projections from it too
    cache_locked_features: bool = True  # both towers locked: compute each sample's tower features once
    # The model's preprocessing (model/preprocess.py), recorded in its checkpoint. Unset: today's default, and left
    # out of the resolved recipe so that runs and studies recorded before these keys keep their identity.
    normalize: Literal["clip", "imagenet"] | None = None  # image mean/std; unset: "clip"
    interpolation: Literal["bicubic", "bilinear", "nearest"] | None = None  # resize and crop; unset: "bicubic"
    text_lowercase: bool | None = None  # unset: true
    text_strip_punctuation: bool | None = None  # punctuation and symbols become spaces; unset: true
    text_max_words: int | None = Field(None, ge=1, le=512)  # words kept of each caption and prompt; unset: 30
