"""`dcl`: the decoupled contrastive loss (Yeh et al. 2022), InfoNCE with the positive left out of the denominator.

    L = mean_i L^I_i + mean_i L^T_i,
    L^I_i = −S_ii/τ + log Σ_{j≠i} e^{S_ij/τ},   L^T_i = −S_ii/τ + log Σ_{j≠i} e^{S_ji/τ},

with one fixed τ (`temperature`). The two sides are summed, as the paper sums over the anchors of both views and as
`sogclr` sums L_I + L_T. Stateless: `index` and `epoch` are not used.

Relation to `sogclr`: with g_i = (1/(B−1)) Σ_{j≠i} e^{(S_ij − S_ii)/τ}, τ·log g_i = τ·L^I_i − τ·log(B−1), so the
gradient of sogclr's objective mean_i τ·log g_i (per side) is τ × DCL's. sogclr with γ = 1 forms its gradient from
the fresh batch estimate (u_i = g_i), so its feature gradient equals τ × this loss's; with γ < 1 it divides by the
tracked u_i instead and the two differ. Only gradients compare: sogclr's loss value is a surrogate.

Multi-process: local rows against global columns, as every clipctl loss (base module docstring).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clipctl.losses.base import Batch, ContrastiveLoss, LossOutput, sum_over_ranks
from clipctl.losses.config import DCLConfig


def decoupled_rows(S: Tensor, pos: Tensor, tau: float) -> Tensor:
    """Σ over these rows of −S_ii/τ + log Σ_{j≠i} e^{S_ij/τ}; row r's positive is column pos[r]."""
    logits = S / tau
    at = pos.unsqueeze(1)
    negatives = logits.scatter(1, at, -math.inf)
    return (torch.logsumexp(negatives, dim=1) - logits.gather(1, at).squeeze(1)).sum()


class DCLLoss(ContrastiveLoss):
    name = "dcl"

    def __init__(
        self, cfg: DCLConfig, num_samples: int, total_epochs: int | None = None, embed_dim: int | None = None
    ) -> None:
        super().__init__(cfg, num_samples, total_epochs, embed_dim)
        self.tau = float(cfg.temperature)

    def _compute(self, batch: Batch, epoch: int, step: int, with_stats: bool) -> LossOutput:
        S_I = batch.x @ batch.t_all.T  # this rank's image rows against all texts
        S_T = S_I.T if batch.world == 1 else batch.t @ batch.x_all.T
        pos = batch.pos
        local = (decoupled_rows(S_I, pos, self.tau) + decoupled_rows(S_T, pos, self.tau)) / batch.global_size
        loss = sum_over_ranks(local, batch)
        self._check_finite({"loss": loss.detach()}, epoch, step)
        return LossOutput(loss, {"tau": self.tau} if with_stats else {})
