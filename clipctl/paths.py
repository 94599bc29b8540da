"""Where data and caches live; one place so every command agrees."""

from __future__ import annotations

import os
from pathlib import Path


def data_root(configured: str = "") -> Path:
    """The data root: the recipe's `data.root`, else $CLIPCTL_DATA, else ./data."""
    return Path(configured or os.environ.get("CLIPCTL_DATA") or "data")


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def torch_hub_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir())
