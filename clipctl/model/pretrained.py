"""The Hugging Face hub repos a model config downloads from (pretrained tower weights, the tokenizer), and whether
each is already in the local hub cache: what `clipctl doctor` reports, so a machine going offline knows first."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipctl.model.config import ModelConfig

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")  # a fast tokenizer is built from either
_HUB_PREFIX = "hf-hub:"


@dataclass(frozen=True)
class HubNeed:
    """One hub repo a model config reads: its id, what for, and the files any one of which makes it usable."""

    repo: str
    what: str  # "image weights", "text weights" or "tokenizer"
    files: tuple[str, ...]


def _local(name: str) -> bool:
    """A folder or file path rather than a hub repo id."""
    return Path(name).exists() or name.startswith((".", "/", "~"))


def _timm_repo(name: str) -> str | None:
    """The hub repo timm takes an architecture's default pretrained weights from (None: not from the hub)."""
    if name.startswith(_HUB_PREFIX):
        return name.removeprefix(_HUB_PREFIX)
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except (RuntimeError, ValueError):  # an unknown or weight-less architecture: it needs nothing from the hub
        return None
    return getattr(cfg, "hf_hub_id", None) or None


def hub_needs(cfg: ModelConfig) -> list[HubNeed]:
    """What building this model downloads from the hub: pretrained image and text weights (unless trained from
    scratch or given as a local checkpoint) and the tokenizer (unless "wordpiece", trained on the captions)."""
    needs = []
    if cfg.image_pretrained and not cfg.image_checkpoint and (repo := _timm_repo(cfg.image_model)):
        needs.append(HubNeed(repo, "image weights", WEIGHT_FILES))
    if cfg.text_pretrained and not _local(cfg.text_model):
        needs.append(HubNeed(cfg.text_model, "text weights", WEIGHT_FILES))
    tokenizer = cfg.text_model if cfg.tokenizer == "auto" else cfg.tokenizer
    if cfg.tokenizer != "wordpiece" and not _local(tokenizer):
        needs.append(HubNeed(tokenizer, "tokenizer", TOKENIZER_FILES))
    return needs


def in_cache(need: HubNeed, cache_dir: Path) -> bool:
    """One of the need's files is in the hub cache (at the revision the cache's `main` ref names)."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(need.repo, name, cache_dir=cache_dir), str) for name in need.files)
