"""`siglip`: the pairwise sigmoid loss (Zhai et al. 2023) with a learnable logit scale and bias.

    L = −(1/B) Σ_i Σ_j log σ(z_ij · (e^{t'}·x_i·t_j + b)),   z_ii = +1, z_ij = −1 (j ≠ i)

over the B² pairs of the global batch, divided by B as in the paper and in open_clip's `SigLipLoss` (which the
tests match, with its t' and b gradients). t' = log(1/τ) (`theta`) starts at −log(`temperature`) (the paper's
log 10 is temperature = 0.1) and b at `bias_init` (−10); both are learned in one optimizer group of their own
(`lr_tau`, no weight decay), and t' is clamped to [0, ln 100] after every step, the box open_clip's training loop
applies to every model's logit scale (τ ∈ [0.01, 1]). Each pair is one term: there is no separate text side.

Multi-process: all-gather, not open_clip's neighbour exchange. The exchange passes text features round a ring in
K−1 steps so that no rank holds more than two chunks, which pays off for the paper's batches of 32k and more, where
the b×B logits and B gathered features are a memory problem. clipctl already gathers every rank's features
(gradient-carrying, `distributed.all_gather_with_grad`) for all its losses: computing this rank's b rows against
the B gathered texts is the same sum in one collective instead of K−1 sequential ones, its value is the
single-process value on the global batch as for every clipctl loss (base module docstring), and its backward goes
through the all-gather the other losses' multi-process tests already check.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipctl.losses.base import Batch, ContrastiveLoss, LossOutput, sum_over_ranks
from clipctl.losses.clip import THETA_MAX
from clipctl.losses.config import SigLIPConfig


def sigmoid_rows(logits: Tensor, pos: Tensor) -> Tensor:
    """Σ over these rows of −log σ(±logit): + for the positive (row r's column pos[r]), − for every other column."""
    signs = torch.full_like(logits, -1.0).scatter_(1, pos.unsqueeze(1), 1.0)
    return -F.logsigmoid(signs * logits).sum()


class SigLIPLoss(ContrastiveLoss):
    name = "siglip"

    def __init__(
        self, cfg: SigLIPConfig, num_samples: int, total_epochs: int | None = None, embed_dim: int | None = None
    ) -> None:
        super().__init__(cfg, num_samples, total_epochs, embed_dim)
        self.theta = nn.Parameter(torch.tensor(-math.log(cfg.temperature)))  # t'; inside [0, THETA_MAX] (config)
        self.bias = nn.Parameter(torch.tensor(float(cfg.bias_init)))

    def _compute(self, batch: Batch, epoch: int, step: int, with_stats: bool) -> LossOutput:
        dtype = batch.x.dtype
        logits = (batch.x @ batch.t_all.T) * torch.exp(self.theta).to(dtype) + self.bias.to(dtype)
        loss = sum_over_ranks(sigmoid_rows(logits, batch.pos) / batch.global_size, batch)
        tau, bias = torch.exp(-self.theta.detach()), self.bias.detach()
        self._check_finite({"loss": loss.detach(), "tau": tau, "bias": bias}, epoch, step)
        if not with_stats:
            return LossOutput(loss)
        values = torch.stack([tau, bias]).tolist()
        return LossOutput(loss, {"tau": values[0], "bias": values[1]})

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        lr = self.cfg.lr_tau if self.cfg.lr_tau is not None else base_lr
        return [{"params": [self.theta, self.bias], "lr": float(lr), "weight_decay": 0.0, "name": "loss.tau_bias"}]

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.theta.clamp_(0.0, THETA_MAX)
