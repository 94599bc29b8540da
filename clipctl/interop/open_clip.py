"""The shim that lets open_clip 3.3 build a DistilBERT text tower: `import clipctl.interop.open_clip` once, before
open_clip creates a model from a clipctl export whose text model is DistilBERT (`clipctl export` says when).

open_clip's `HFTextEncoder` (open_clip/hf_model.py) passes `add_pooling_layer=` to every transformers model it
creates and reads the tower's width through `hf_configs.arch_dict[model_type]`; DistilBERT takes no such argument
(TypeError) and has no entry (KeyError 'distilbert'). Importing this module adds the entry and has open_clip's
`AutoModel` drop `add_pooling_layer` for model types without a pooler. Nothing else in open_clip changes, and
towers open_clip supports (BERT, RoBERTa, XLM-R) load exactly as before, patched or not.

Upstream change that would remove this module: `HFTextEncoder` passing `add_pooling_layer` only when it uses the
transformers pooler (pooler_type "cls_pooler") or only to models whose constructor accepts it, plus a
"distilbert" entry in `arch_dict`.
"""

from __future__ import annotations

from typing import Any

from open_clip import hf_configs, hf_model
from transformers import AutoConfig, AutoModel

from clipctl.interop.openclip_format import SHIM_ARCHITECTURES


def _without_pooling_argument(model_type: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    if model_type in SHIM_ARCHITECTURES:
        return {k: v for k, v in kwargs.items() if k != "add_pooling_layer"}
    return kwargs


class PoolerFreeAutoModel:
    """transformers' AutoModel for open_clip's HFTextEncoder, minus `add_pooling_layer` for models without a pooler."""

    @staticmethod
    def from_config(config: Any, **kwargs: Any) -> Any:
        return AutoModel.from_config(config, **_without_pooling_argument(config.model_type, kwargs))

    @staticmethod
    def from_pretrained(name: str, *args: Any, **kwargs: Any) -> Any:
        config = kwargs.get("config") or AutoConfig.from_pretrained(name)
        return AutoModel.from_pretrained(name, *args, **_without_pooling_argument(config.model_type, kwargs))


def install() -> None:
    """Apply the shim (idempotent; importing this module already did)."""
    for model_type, entry in SHIM_ARCHITECTURES.items():
        hf_configs.arch_dict.setdefault(model_type, entry)
    hf_model.AutoModel = PoolerFreeAutoModel


install()
