"""`clip`: mini-batch InfoNCE, L = ½[CE(S/τ, diag) + CE(Sᵀ/τ, diag)], τ fixed or learnable.

Learnable: θ = log(1/τ) (logit scale), its own optimizer group without weight decay, clamped to
[0, ln 100] after every optimizer step (so τ ∈ [0.01, 1]); τ is reported every step.

The loss is a weighted sum of terms (`_terms`, `_weights`), each a sum over the global batch's rows that every rank
computes for its own rows: `cyclip` adds its regularisers that way.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipctl.losses.base import Batch, ContrastiveLoss, LossOutput, sum_over_ranks
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
        S_I = batch.x @ batch.t_all.T  # this rank's image rows against all texts
        S_T = S_I.T if batch.world == 1 else batch.t @ batch.x_all.T
        terms = self._terms(batch, S_I, S_T)
        values = sum_over_ranks(torch.stack(list(terms.values())), batch)
        weights = self._weights()
        loss = values @ values.new_tensor([weights[name] for name in terms])
        tau = torch.exp(-self.theta.detach())
        self._check_finite({"loss": loss.detach(), "tau": tau}, epoch, step)
        if not with_stats:
            return LossOutput(loss)
        named = {"tau": tau.to(values), **(dict(zip(terms, values.detach())) if len(terms) > 1 else {})}
        return LossOutput(loss, dict(zip(named, torch.stack(list(named.values())).tolist())))

    def _terms(self, batch: Batch, S_I: Tensor, S_T: Tensor) -> dict[str, Tensor]:
        """This rank's share of each term of the loss (its rows' part of a sum over the global batch), unweighted.

        S_I: local image rows × global texts; S_T: local text rows × global images."""
        scale = torch.exp(self.theta).to(S_I.dtype)
        target = batch.pos
        image = F.cross_entropy(S_I * scale, target, reduction="sum")
        text = F.cross_entropy(S_T * scale, target, reduction="sum")
        return {"contrastive": (image + text) / (2 * batch.global_size)}

    def _weights(self) -> dict[str, float]:
        """The weight of each term of `_terms` in the loss."""
        return {"contrastive": 1.0}

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        if not self.learnable:
            return []
        lr = self.cfg.lr_tau if self.cfg.lr_tau is not None else base_lr
        return [{"params": [self.theta], "lr": float(lr), "weight_decay": 0.0, "name": "loss.tau"}]

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self.learnable:
            self.theta.clamp_(0.0, THETA_MAX)
