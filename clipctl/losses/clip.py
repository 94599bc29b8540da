"""`clip`: mini-batch InfoNCE, L = ½[CE(S/τ, diag) + CE(Sᵀ/τ, diag)], τ fixed or learnable.

Learnable: θ = log(1/τ) (logit scale), its own optimizer group without weight decay, clamped to
[0, ln 100] after every optimizer step (so τ ∈ [0.01, 1]); τ is reported every step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipctl.losses import distributed as D
from clipctl.losses.base import Batch, ContrastiveLoss, LossOutput
from clipctl.losses.config import CLIP_TAU_BOX, CLIPConfig

THETA_MAX = -math.log(CLIP_TAU_BOX[0])


class CLIPLoss(ContrastiveLoss):
    name = "clip"

    def __init__(
        self, cfg: CLIPConfig, num_samples: int, total_epochs: int | None = None, embed_dim: int | None = None
    ) -> None:
        super().__init__(cfg, num_samples, total_epochs, embed_dim)
        self.learnable = bool(cfg.learnable_temp)
        theta = -math.log(cfg.temperature)  # a learnable start is inside [0, THETA_MAX] (CLIPConfig checks)
        if self.learnable:
            self.theta = nn.Parameter(torch.tensor(theta))
        else:
            self.register_buffer("theta", torch.tensor(theta), persistent=False)

    def _compute(self, batch: Batch, epoch: int, step: int, with_stats: bool) -> LossOutput:
        scale = torch.exp(self.theta).to(batch.x.dtype)
        logits_I = (batch.x @ batch.t_all.T) * scale
        logits_T = logits_I.T if batch.world == 1 else (batch.t @ batch.x_all.T) * scale
        target = batch.pos
        local = (
            F.cross_entropy(logits_I, target, reduction="sum") + F.cross_entropy(logits_T, target, reduction="sum")
        ) / (2 * batch.global_size)
        if batch.world == 1:
            loss = local
        else:
            scaled = local * batch.world
            loss = scaled + (D.all_reduce_sum(local) - scaled).detach()
        tau = torch.exp(-self.theta.detach())
        self._check_finite({"loss": loss.detach(), "tau": tau}, epoch, step)
        return LossOutput(loss, {"tau": float(tau)} if with_stats else {})

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        if not self.learnable:
            return []
        lr = self.cfg.lr_tau if self.cfg.lr_tau is not None else base_lr
        return [{"params": [self.theta], "lr": float(lr), "weight_decay": 0.0, "name": "loss.tau"}]

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self.learnable:
            self.theta.clamp_(0.0, THETA_MAX)
