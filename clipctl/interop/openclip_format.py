"""The open_clip layout of a clipctl model: parameter names, `open_clip_config.json`, and which towers open_clip 3.3
builds (and which ones only with the shim `clipctl.interop.open_clip`).

open_clip holds a clipctl model as a `CustomTextCLIP`: a `TimmModel` image tower (the timm trunk, then a bias-free
linear `head.proj`, as clipctl's `image_proj`) and an `HFTextEncoder` (the transformers encoder, a pooler on the
attention mask `ids != pad_token_id` as clipctl's, then a bias-free linear `proj`). Only the parameter prefixes
differ, so the mapping is a rename both ways.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from clipctl.errors import UsageError
from clipctl.model.config import ModelConfig
from clipctl.model.preprocess import Preprocess

WEIGHTS = "open_clip_model.safetensors"
CONFIG = "open_clip_config.json"
SHIM_MODULE = "clipctl.interop.open_clip"

# clipctl prefix -> open_clip prefix
KEY_PREFIXES = (
    ("image_tower.", "visual.trunk."),
    ("image_proj.", "visual.head.proj."),
    ("text_tower.encoder.", "text.transformer."),
    ("text_proj.", "text.proj."),
)
POOLERS = {"mean": "mean_pooler", "cls": "cls_last_hidden_state_pooler"}

# Text model types open_clip 3.3's HFTextEncoder cannot build as shipped, with the `arch_dict` entry the shim adds.
SHIM_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "distilbert": {
        "config_names": {
            "context_length": "max_position_embeddings",
            "vocab_size": "vocab_size",
            "width": "dim",
            "heads": "n_heads",
            "layers": "n_layers",
        },
        "pooler": "mean_pooler",
    }
}

# model.image_kwargs that open_clip's vision_cfg can express, and those that change nothing in eval mode (dropout).
IMAGE_KWARGS = {"global_pool": "timm_pool", "drop_path_rate": "timm_drop_path"}
EVAL_NEUTRAL_KWARGS = {"drop_rate"}


def to_open_clip_state(state: dict[str, torch.Tensor], temperature: float) -> dict[str, torch.Tensor]:
    """clipctl's CLIPModel state dict under open_clip's names, plus `logit_scale = ln(1/τ)`."""
    out = {_rename(key, 0, 1): value for key, value in state.items()}
    out["logit_scale"] = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
    return out


def from_open_clip_state(state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """An exported open_clip state dict back under clipctl's names (`logit_scale` lives in the manifest)."""
    return {_rename(key, 1, 0, where): value for key, value in state.items() if key != "logit_scale"}


def _rename(key: str, src: int, dst: int, where: str = "the model") -> str:
    for pair in KEY_PREFIXES:
        if key.startswith(pair[src]):
            return pair[dst] + key[len(pair[src]) :]
    raise UsageError(f"{where}: parameter {key!r} belongs to no tower of a clipctl model; not written by clipctl")


def vision_cfg(model: ModelConfig, image_size: int) -> dict[str, Any]:
    """open_clip's vision_cfg for the timm image tower; image_kwargs it cannot express are refused."""
    cfg: dict[str, Any] = {
        "timm_model_name": model.image_model,
        "timm_model_pretrained": False,
        "timm_pool": "",  # "": keep the timm model's own pooling, as clipctl's num_classes=0 tower does
        "timm_proj": "linear",
        "timm_proj_bias": False,
        "image_size": image_size,
    }
    for key, value in model.image_kwargs.items():
        if key in IMAGE_KWARGS:
            cfg[IMAGE_KWARGS[key]] = value
        elif key not in EVAL_NEUTRAL_KWARGS:
            raise UsageError(
                f"model.image_kwargs.{key} has no counterpart in open_clip's vision_cfg (it takes "
                f"{', '.join(sorted(IMAGE_KWARGS))}); export with --format safetensors instead"
            )
    return cfg


def text_cfg(model: ModelConfig, folder: str, context_length: int, clean: str) -> dict[str, Any]:
    """open_clip's text_cfg: an HF text tower whose config.json and tokenizer files are in `folder`, its tokenizer
    cleaning texts the `clean` way (`text_clean`)."""
    return {
        "hf_model_name": folder,  # open_clip 3.3 builds the HF tower from a name or path only: this folder's
        "hf_tokenizer_name": folder,
        "hf_model_pretrained": False,
        "hf_proj_type": "linear",
        "hf_pooler_type": POOLERS[model.text_pooling],
        "context_length": context_length,
        "tokenizer_kwargs": {"clean": clean},
    }


def text_clean(preprocess: Preprocess) -> str:
    """open_clip's tokenizer cleaning nearest the model's caption cleaning: "canonicalize" lower-cases and deletes
    punctuation (clipctl turns it into a space: the two differ inside a word, as in "t-shirt", and open_clip keeps
    more than `max_words` words), "lower" only lower-cases; the export's check texts hold them to the same tokens."""
    if preprocess.strip_punctuation and preprocess.lowercase:
        return "canonicalize"
    if preprocess.strip_punctuation:
        raise UsageError(
            "--format open_clip: open_clip's tokenizer cannot strip punctuation and keep the case "
            "(model.text_lowercase = false); export with --format safetensors instead"
        )
    return "lower" if preprocess.lowercase else "whitespace"


def check_text_type(model_type: str, shipped: dict[str, Any]) -> bool:
    """Whether open_clip builds this text model type only with the shim (True) or as shipped (False); a type it
    cannot build at all is refused."""
    if model_type in SHIM_ARCHITECTURES:
        return True
    if model_type in shipped:
        return False
    known = sorted({*shipped, *SHIM_ARCHITECTURES})
    raise UsageError(
        f"open_clip has no text tower for model type {model_type!r} (it builds {', '.join(known)}); "
        "export with --format safetensors instead"
    )
