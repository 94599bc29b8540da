"""Optimizers through timm's factory, with the report's ten names and no weight decay where it hurts."""
from __future__ import annotations

import importlib.util
from typing import Any

import torch
from timm.optim import create_optimizer_v2, param_groups_weight_decay

from clipctl.errors import UsageError
from clipctl.recipe import OptimConfig

# The report's fused names: NVIDIA apex kernels when present (CUDA only), else torch's own fused kernel
# where one exists. No silent substitution of a different algorithm.
_FUSED_FALLBACK = {"fusedadam": "torch-fused-adam", "fusedlamb": None, "fusednovograd": None}
_UNFUSED_ALTERNATIVE = {"fusedlamb": "lamb", "fusednovograd": "novograd"}


def _apex_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("apex") is not None


def unavailable_optimizers(names: list[str]) -> list[str]:
    """The optimizer names among `names` that cannot run on this machine: apex-only kernels without apex on CUDA.

    Why: the tuner drops them from a search space up front instead of spending trials that can only fail.
    """
    if _apex_available():
        return []
    return [name for name in names if name in _FUSED_FALLBACK and _FUSED_FALLBACK[name] is None]


def _timm_name(name: str) -> str:
    # timm's "novograd" is NVIDIA's NovoGrad (NvNovoGrad); the report lists both names, which are one algorithm now.
    return {"nvnovograd": "novograd"}.get(name, name)


def parameter_groups(model: torch.nn.Module, loss_groups: list[dict[str, Any]], weight_decay: float) -> list[dict[str, Any]]:
    """Model groups with weight decay on matrices only (biases, norms and 1-d params excluded) + the loss's own."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable and not loss_groups:
        raise UsageError("no trainable parameters: model.lock_image and model.lock_text froze everything")
    groups = [g for g in param_groups_weight_decay(model, weight_decay) if g["params"]]
    return groups + [g for g in loss_groups if g["params"]]


def build_optimizer(model: torch.nn.Module, loss_groups: list[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, loss_groups, cfg.weight_decay)
    name = cfg.name
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if name in ("adam", "adamw", "radam", "novograd", "nvnovograd", "lamb", "adan", "fusedadam", "fusedlamb", "fusednovograd"):
        kwargs["eps"] = cfg.eps
    if name in ("adam", "adamw", "radam", "lamb", "lion", "fusedadam", "fusedlamb"):
        kwargs["betas"] = tuple(cfg.betas)
    if name in ("momentum", "sgd", "rmsprop"):
        kwargs["momentum"] = cfg.momentum
    if name in _FUSED_FALLBACK and not _apex_available():
        if _FUSED_FALLBACK[name] is None:
            raise UsageError(
                f"optim.name = {name!r}: needs NVIDIA apex on a CUDA device, not available here; "
                f"use optim.name = {_UNFUSED_ALTERNATIVE[name]!r} (same update rule, unfused) or 'fusedadam'"
            )
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, fused=True)
    return create_optimizer_v2(groups, opt=_timm_name(name), **kwargs)
