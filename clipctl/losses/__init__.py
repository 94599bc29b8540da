"""Contrastive losses with per-sample state (specs/losses.md).

    from clipctl.losses import build_loss, LOSSES
    loss_fn = build_loss(loss_config, num_samples=N)           # N: training set size
    out = loss_fn(image_features, text_features, index, epoch=e)  # out.loss, out.stats
    loss_fn.state_dict() / loss_fn.load_state_dict(sd, reset=False)
"""
from __future__ import annotations

from typing import Any, Mapping

from pydantic import ValidationError

from clipctl.errors import UsageError
from clipctl.losses.base import ContrastiveLoss, LossOutput
from clipctl.losses.clip import CLIPLoss
from clipctl.losses.fastclip import FastCLIPv3Loss
from clipctl.losses.isogclr import ISogCLRLoss, ISogCLRNewLoss, ISogCLRNewV2Loss
from clipctl.losses.sogclr import SogCLRLoss
from clipctl.recipe import LossConfig, _format_validation_error

LOSSES: dict[str, type[ContrastiveLoss]] = {
    cls.name: cls for cls in (CLIPLoss, SogCLRLoss, ISogCLRLoss, ISogCLRNewLoss, ISogCLRNewV2Loss, FastCLIPv3Loss)
}


def build_loss(
    loss_config: LossConfig | Mapping[str, Any],
    num_samples: int,
    *,
    total_epochs: int | None = None,
    embed_dim: int | None = None,
) -> ContrastiveLoss:
    """The loss named by `loss_config` (the recipe's [loss] table as a dict, or a `LossConfig`).

    `total_epochs` is the run length for η schedules `cosine`/`exp` (or call `set_total_epochs`);
    `embed_dim` is required by `isogclr_new` with `temp_net = true`.
    """
    if isinstance(loss_config, LossConfig):
        cfg = loss_config
    elif isinstance(loss_config, Mapping):
        try:
            cfg = LossConfig.model_validate(dict(loss_config))
        except ValidationError as err:
            raise UsageError(_format_validation_error("build_loss: loss", err, LossConfig).replace(": loss: ", ": loss.", 1)) from None
    else:
        raise UsageError(f"build_loss: expected a LossConfig or a dict of [loss] keys, got {type(loss_config).__name__}")
    return LOSSES[cfg.name](cfg, num_samples, total_epochs=total_epochs, embed_dim=embed_dim)


__all__ = ["LOSSES", "build_loss", "ContrastiveLoss", "LossOutput"]
