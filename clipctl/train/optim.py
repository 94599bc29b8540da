"""Optimizers through timm's registry: the report's names, and only the arguments each optimizer accepts.

What an optimizer takes (eps, betas, momentum) and whether it is an NVIDIA apex kernel comes from timm's
`OptimInfo` (`timm.optim.get_optimizer_info`); the recipe-level names are `recipe.OptimizerName`.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from timm.optim import OptimInfo, create_optimizer_v2, get_optimizer_info, param_groups_weight_decay

from clipctl.errors import UsageError
from clipctl.recipe import OptimConfig

# Recipe names timm registers under another name: timm's "novograd" is NVIDIA's NovoGrad (NvNovoGrad); the report
# lists both names, which are one algorithm now.
_TIMM_NAMES = {"nvnovograd": "novograd"}
# NovoGrad keeps its own betas (0.95, 0.98): the recipe's `optim.betas` default is Adam's (0.9, 0.999), and the
# report's NovoGrad runs used NovoGrad's defaults.
_OWN_BETAS = ("novograd", "nvnovograd", "fusednovograd")
# Apex kernels that torch has a fused kernel of its own for, used when apex is not there. No silent substitution
# of a different algorithm: the others are refused, naming their unfused equivalent.
_TORCH_FUSED = ("fusedadam",)
_UNFUSED_ALTERNATIVE = {"fusedlamb": "lamb", "fusednovograd": "novograd"}
# torch's Adam and AdamW step each parameter tensor on its own on the CPU (their multi-tensor path is the default on
# accelerators only): about 28 small ops per tensor, half of the 4,300-4,700 ops of a quickstart step. Their fused CPU
# kernel makes the same update in one pass per tensor (bench/profile_step.py); the results agree to float rounding.
_FUSED_ON_CPU = (torch.optim.Adam, torch.optim.AdamW)


def _apex_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("apex") is not None


def optimizer_info(name: str) -> OptimInfo:
    """timm's record of a recipe-level optimizer name."""
    return get_optimizer_info(_TIMM_NAMES.get(name, name))


def _needs_apex(name: str) -> bool:
    """timm registers the apex kernels by import path (`apex.optimizers.FusedLAMB`), not as a class."""
    opt_class = optimizer_info(name).opt_class
    return isinstance(opt_class, str) and opt_class.startswith("apex.")


def unavailable_optimizers(names: list[str]) -> list[str]:
    """The optimizer names among `names` that cannot run on this machine: apex-only kernels without apex on CUDA.

    Why: the tuner drops them from a search space up front instead of spending trials that can only fail.
    """
    if _apex_available():
        return []
    return [name for name in names if _needs_apex(name) and name not in _TORCH_FUSED]


def optimizer_kwargs(cfg: OptimConfig) -> dict[str, Any]:
    """lr and weight decay, plus eps, betas and momentum where the optimizer takes them (timm's OptimInfo)."""
    info = optimizer_info(cfg.name)
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if info.has_eps:
        kwargs["eps"] = cfg.eps
    if info.has_betas and info.num_betas == len(cfg.betas) and cfg.name not in _OWN_BETAS:
        kwargs["betas"] = tuple(cfg.betas)
    if info.has_momentum:
        kwargs["momentum"] = cfg.momentum
    return kwargs


def parameter_groups(
    model: torch.nn.Module, loss_groups: list[dict[str, Any]], weight_decay: float
) -> list[dict[str, Any]]:
    """Model groups with weight decay on matrices only (biases, norms and 1-d params excluded) + the loss's own."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable and not loss_groups:
        raise UsageError("no trainable parameters: model.lock_image and model.lock_text froze everything")
    groups = [g for g in param_groups_weight_decay(model, weight_decay) if g["params"]]
    return groups + [g for g in loss_groups if g["params"]]


def build_optimizer(
    model: torch.nn.Module, loss_groups: list[dict[str, Any]], cfg: OptimConfig
) -> torch.optim.Optimizer:
    groups = parameter_groups(model, loss_groups, cfg.weight_decay)
    name = cfg.name
    if _needs_apex(name) and not _apex_available():
        if name not in _TORCH_FUSED:
            raise UsageError(
                f"optim.name = {name!r}: needs NVIDIA apex on a CUDA device, not available here; "
                f"use optim.name = {_UNFUSED_ALTERNATIVE[name]!r} (same update rule, unfused) or 'fusedadam'"
            )
        return torch.optim.Adam(
            groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, fused=True
        )
    kwargs = {**optimizer_kwargs(cfg), **_fused_on_cpu(name, groups)}
    return create_optimizer_v2(groups, opt=_TIMM_NAMES.get(name, name), **kwargs)


def _fused_on_cpu(name: str, groups: list[dict[str, Any]]) -> dict[str, bool]:
    """`fused=True` for torch's Adam and AdamW when every parameter is a floating-point CPU tensor."""
    params = [p for group in groups for p in group["params"]]
    on_cpu = bool(params) and all(p.device.type == "cpu" and p.is_floating_point() for p in params)
    return {"fused": True} if on_cpu and optimizer_info(name).opt_class in _FUSED_ON_CPU else {}
