"""`sogclr`: the global contrastive loss with one fixed temperature (SogCLR)."""

from __future__ import annotations

import torch
from torch import Tensor

from clipctl.losses.base import Batch
from clipctl.losses.gcl import GlobalContrastiveLoss


class SogCLRLoss(GlobalContrastiveLoss):
    """Gradient = mean_i τ∇log g_i with g replaced by the tracked s (no 1/τ factor); the value is a
    surrogate (often negative): log it, select models on metrics."""

    name = "sogclr"

    def _anchor_taus(self, batch: Batch, old: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        tau = torch.full((batch.local_size,), float(self.cfg.temperature), dtype=batch.x.dtype, device=batch.x.device)
        return tau, tau
