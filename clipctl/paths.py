"""Where data and caches live; one place so every command agrees."""

from __future__ import annotations

import os
from pathlib import Path


def data_root(configured: str = "") -> Path:
    """The data root: the recipe's `data.root`, else $CLIPCTL_DATA, else ./data."""
    return Path(configured or os.environ.get("CLIPCTL_DATA") or "data")


def chosen_data_root(given: str | Path | None = None, recorded: str = "") -> tuple[Path, str]:
    """The data root a command that reads someone else's settings uses, and why: `given` (--data-root), else
    $CLIPCTL_DATA, else `recorded` (the data.root a checkpoint was trained with), else ./data. Why this order: a
    checkpoint evaluated on another machine must find that machine's data, not the path baked into it."""
    if given:
        return Path(given), "--data-root"
    if os.environ.get("CLIPCTL_DATA"):
        return Path(os.environ["CLIPCTL_DATA"]), "$CLIPCTL_DATA"
    if recorded:
        return Path(recorded), "the checkpoint's data.root"
    return Path("data"), "the default ./data"


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def torch_hub_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir())
