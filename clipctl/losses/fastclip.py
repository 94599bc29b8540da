"""`fastclip_v3`: one learnable global τ for the robust objective F(τ) = τ·mean_i(log g_I,i + log g_T,i) + 2ρτ.

Encoders get the SogCLR surrogate gradient at the current τ. The temperature is θ = log(1/τ), a
parameter in its own optimizer group (`lr_tau`, no weight decay), clamped so τ ∈ [tau_min, tau_max]
(default [0.01, 1]) after every optimizer step; ρ = (rho_I + rho_T)/2.

Exact τ-derivative. With g_i(τ) = (1/(B−1)) Σ_j exp(h_ij/τ) and z_ij = h_ij/τ,
    d/dτ [τ·log g_i(τ)] = log g_i + τ·g_i'(τ)/g_i = log g_i − (1/(B−1)) Σ_j (exp(z_ij)/g_i)·z_ij,
because g_i'(τ) = −(1/(B−1)) Σ_j exp(z_ij)·h_ij/τ². Replacing g_i by its tracked estimate u_i = e^{ℓ_i}
(log g_i → ℓ_i and exp(z_ij)/g_i → exp(z_ij − ℓ_i) = w_ij) gives
    dF/dτ = mean_i [ℓ_I,i − (1/(B−1)) Σ_j w^I_ij z^I_ij] + mean_i [ℓ_T,i − (1/(B−1)) Σ_j w^T_ij z^T_ij] + 2ρ,
and dF/dθ = −τ·dF/dτ. Both the log g term and the −Σ w·z term are kept (the public reference code uses a
different expression); with γ = 1 this is exactly the autograd derivative of F on the batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from clipctl.errors import UsageError
from clipctl.losses.base import Batch
from clipctl.losses.config import FastCLIPv3Config
from clipctl.losses.gcl import GlobalContrastiveLoss, Step, Table


class FastCLIPv3Loss(GlobalContrastiveLoss):
    name = "fastclip_v3"

    def __init__(
        self, cfg: FastCLIPv3Config, num_samples: int, total_epochs: int | None = None, embed_dim: int | None = None
    ) -> None:
        super().__init__(cfg, num_samples, total_epochs, embed_dim)
        self.tau_min, self.tau_max = float(cfg.tau_min), float(cfg.tau_max)
        if not self.tau_min <= cfg.temperature <= self.tau_max:
            raise UsageError(
                f"loss.temperature = {cfg.temperature}: outside [tau_min, tau_max] = [{self.tau_min}, {self.tau_max}] "
                "of fastclip_v3; set the initial temperature inside the box"
            )
        self.rho = 0.5 * (float(cfg.rho_I) + float(cfg.rho_T))
        self.theta = nn.Parameter(torch.tensor(-math.log(cfg.temperature)))

    @property
    def tau(self) -> Tensor:
        return torch.exp(-self.theta)

    def _anchor_taus(self, batch: Batch, old: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        tau = self.tau.detach().to(device=batch.x.device, dtype=batch.x.dtype).expand(batch.local_size)
        return tau, tau

    def _update(self, step: Step) -> None:
        for side, result in (("I", step.side_I), ("T", step.side_T)):
            step.rows[f"grad_tau_{side}"] = result.tau_slope

    def _tau_derivative(self, table: Table) -> Tensor:
        return (table["grad_tau_I"] + table["grad_tau_T"]).mean() + 2.0 * self.rho

    def _extra_loss(self, step: Step, table: Table) -> Tensor:
        # Gradient w.r.t. θ: dF/dτ · dτ/dθ. dF/dτ is the global-batch value on every rank, so
        # reduce_gradients() (an average over ranks) leaves it unchanged.
        return self.tau.to(step.batch.x.dtype) * self._tau_derivative(table).to(step.batch.x.dtype).detach()

    def _extra_stats(self, step: Step, table: Table) -> dict[str, Tensor]:
        tau = self.tau.detach().to(table.values)
        logs = table["log_u_I"] + table["log_u_T"]
        return {
            "tau": tau,
            "tau_grad": self._tau_derivative(table),
            "objective": tau * logs.mean() + 2.0 * self.rho * tau,
        }

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        lr = self.cfg.lr_tau if self.cfg.lr_tau is not None else base_lr
        return [{"params": [self.theta], "lr": float(lr), "weight_decay": 0.0, "name": "loss.tau"}]

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.theta.clamp_(-math.log(self.tau_max), -math.log(self.tau_min))
