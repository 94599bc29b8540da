"""Image tower: any timm model as a pooled feature extractor, from scratch, from the hub or from a local file.

The tower is the timm model itself built with `num_classes=0`, so its output is the pooled feature vector
of width `model.num_features`. Weight loading failures (offline, missing file, wrong architecture) become
one-line `UsageError`s that say how to get out, never a hub traceback.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from timm.models import load_state_dict, load_state_dict_from_hf
from torch import nn

from clipctl.errors import UsageError
from clipctl.model.config import ModelConfig
from clipctl.model.util import first_line

# create_model arguments that other recipe keys own; setting them through image_kwargs would fight those keys.
_RESERVED_KWARGS = {
    "model_name": "model.image_model",
    "pretrained": "model.image_pretrained",
    "num_classes": "nothing (the tower always returns pooled features, num_classes = 0)",
    "checkpoint_path": "model.image_checkpoint",
    "pretrained_cfg_overlay": "model.image_checkpoint",
}
_HUB_PREFIX = "hf-hub:"
_DIR_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
_WAYS_OUT = (
    "put them in the local Hugging Face cache or set model.image_checkpoint to a local .safetensors/.pth "
    "file, or set model.image_pretrained = false to train from scratch"
)


def build_image_tower(cfg: ModelConfig, load_weights: bool = True) -> nn.Module:
    """The timm model named by `model.image_model`, with pretrained weights when asked (and `load_weights`)."""
    _check_kwargs(cfg.image_kwargs)
    _check_name(cfg.image_model)
    if cfg.image_checkpoint and not cfg.image_pretrained:
        raise UsageError(
            f"model.image_checkpoint = '{cfg.image_checkpoint}' is set but model.image_pretrained = false; "
            'set model.image_pretrained = true to load it, or model.image_checkpoint = "" to train from scratch'
        )
    from_timm_source = load_weights and cfg.image_pretrained and not cfg.image_checkpoint
    try:
        model = timm.create_model(cfg.image_model, pretrained=from_timm_source, num_classes=0, **cfg.image_kwargs)
    except OSError as err:  # offline hub, HTTP errors, missing cache entries: all OSError subclasses
        if from_timm_source:
            raise UsageError(
                f"model.image_model = '{cfg.image_model}': pretrained weights could not be loaded "
                f"({first_line(err)}); {_WAYS_OUT}"
            ) from err
        raise UsageError(
            f"model.image_model = '{cfg.image_model}': its config could not be fetched ({first_line(err)}); "
            "use a timm architecture name (see `timm.list_models()`) or restore network access"
        ) from err
    except RuntimeError as err:  # timm: "No pretrained weights exist for ..."
        if not from_timm_source:
            raise
        raise UsageError(
            f"model.image_model = '{cfg.image_model}': timm has no pretrained weights for it ({first_line(err)}); "
            "set model.image_checkpoint to a local weights file, or model.image_pretrained = false"
        ) from err
    except TypeError as err:
        if not cfg.image_kwargs:
            raise
        raise UsageError(
            f"model.image_kwargs = {cfg.image_kwargs} is not accepted by timm model '{cfg.image_model}' "
            f"({first_line(err)}); remove or rename the offending key"
        ) from err
    if cfg.image_checkpoint and load_weights:
        load_image_checkpoint(model, cfg.image_checkpoint)
    return model


def load_image_checkpoint(model: nn.Module, ref: str) -> None:
    """Load timm-format weights from a file, a folder holding one, or `hf-hub:ORG/REPO`, strictly.

    timm's own pretrained path loads non-strictly once the classifier is dropped, so a wrong file would
    silently leave random weights; here every tower parameter must be present and nothing else may be.
    """
    state = _read_state_dict(ref)
    classifiers = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    for head in (classifiers,) if isinstance(classifiers, str) else classifiers:
        state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise UsageError(
            f"model.image_checkpoint = '{ref}' does not fit timm model '{_arch(model)}' ({first_line(err)}); "
            "use weights saved from the same architecture"
        ) from err
    if result.missing_keys or result.unexpected_keys:
        raise UsageError(
            f"model.image_checkpoint = '{ref}' does not fit timm model '{_arch(model)}': "
            f"{len(result.missing_keys)} missing keys {result.missing_keys[:3]}, "
            f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:3]}; "
            "use weights saved from the same architecture"
        )


def _read_state_dict(ref: str) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint, read without executing code (safetensors, or torch with weights_only=True)."""
    if ref.startswith(_HUB_PREFIX):
        try:
            return load_state_dict_from_hf(ref[len(_HUB_PREFIX) :], weights_only=True)
        except OSError as err:
            raise UsageError(
                f"model.image_checkpoint = '{ref}' could not be loaded ({first_line(err)}); put it in the local "
                "Hugging Face cache or give a local file path, or set model.image_pretrained = false"
            ) from err
    path = Path(ref).expanduser()
    if path.is_dir():
        found = [path / name for name in _DIR_WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise UsageError(
                f"model.image_checkpoint = '{ref}' is a folder without {' or '.join(_DIR_WEIGHT_FILES)}; "
                "point it at the weights file itself"
            )
        path = found[0]
    if not path.is_file():
        raise UsageError(
            f"model.image_checkpoint = '{ref}': no such file; give a .safetensors or torch weights file, "
            f"a folder holding model.safetensors, or '{_HUB_PREFIX}ORG/REPO'"
        )
    try:
        return load_state_dict(str(path), weights_only=True)
    except Exception as err:  # unreadable user file: pickle refusal, corrupt safetensors, not a state dict
        raise UsageError(
            f"model.image_checkpoint = '{ref}' could not be read as weights ({first_line(err)}); "
            "save a plain state dict with torch.save or safetensors"
        ) from err


def _check_kwargs(kwargs: dict) -> None:
    for key in kwargs:
        if key in _RESERVED_KWARGS:
            raise UsageError(f"model.image_kwargs.{key} is not allowed; use {_RESERVED_KWARGS[key]} instead")


def _check_name(name: str) -> None:
    """Unknown timm names fail here with suggestions instead of timm's bare RuntimeError."""
    if name.startswith((_HUB_PREFIX, "local-dir:")) or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "see `timm.list_models()` for the names"
    raise UsageError(f"model.image_model = '{name}' is not a timm model; {hint}")


def _arch(model: nn.Module) -> str:
    return (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
