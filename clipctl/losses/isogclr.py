"""`isogclr`, `isogclr_new`, `isogclr_new_v2`: global contrastive losses with individual temperatures.

Objective per side: mean_i τ_i(log g_i(τ_i) + ρ), τ_i ∈ [τ_min, τ_max]. After the shared SogCLR step
(which uses the current τ), with the UPDATED log-domain estimate ℓ:
  G_i = ℓ_i + ρ − (1/(B−1)) Σ_j w_ij z_ij     (= ∂/∂τ_i [τ_i(log g_i + ρ)] with g replaced by u = e^ℓ)
  G_i ← clip(G_i, ±tau_grad_clip)  (0: off);  m_i ← (1−β)m_i + β·G_i;  τ_i ← clip(τ_i − η·m_i, τ_min, τ_max)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from clipctl.errors import UsageError
from clipctl.losses.base import Batch
from clipctl.losses.config import IndividualTempConfig, ISogCLRNewConfig
from clipctl.losses.gcl import GlobalContrastiveLoss, Step, Table, log_moving_average, positives
from clipctl.losses.schedules import eta_at
from clipctl.losses.tempnet import TemperatureNet


class ISogCLRLoss(GlobalContrastiveLoss):
    """Per-sample τ and momentum buffers per side, updated by momentum SGD on G inside the loss."""

    name = "isogclr"
    state_columns = ("log_u_I", "log_u_T", "tau_I", "m_I", "tau_T", "m_T")

    def __init__(
        self, cfg: IndividualTempConfig, num_samples: int, total_epochs: int | None = None, embed_dim: int | None = None
    ) -> None:
        super().__init__(cfg, num_samples, total_epochs, embed_dim)
        self.rho = {"I": float(cfg.rho_I), "T": float(cfg.rho_T)}
        self.tau_min, self.tau_max = float(cfg.tau_min), float(cfg.tau_max)
        if not self.tau_min <= cfg.tau_init <= self.tau_max:
            raise UsageError(
                f"loss.tau_init = {cfg.tau_init}: outside [tau_min, tau_max] = [{self.tau_min}, "
                f"{self.tau_max}] of loss "
                f"{self.name}; set tau_init inside the box"
            )

    def _column_init(self) -> dict[str, float]:
        init = super()._column_init()
        init.update(tau_I=float(self.cfg.tau_init), tau_T=float(self.cfg.tau_init))
        return init

    def eta_at(self, epoch: int) -> float:
        return eta_at(epoch, self.cfg.eta_schedule, float(self.cfg.eta_init), self.total_epochs)

    def _anchor_taus(self, batch: Batch, old: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return old["tau_I"], old["tau_T"]

    def _tau_gradient(self, step: Step, side: str) -> Tensor:
        result = step.side_I if side == "I" else step.side_T
        grad = result.tau_slope + self.rho[side]
        clip = float(self.cfg.tau_grad_clip)
        return grad.clamp_(-clip, clip) if clip > 0 else grad

    def _update(self, step: Step) -> None:
        beta, eta = float(self.cfg.beta_u), self.eta_at(step.epoch)
        for side in ("I", "T"):
            grad = self._tau_gradient(step, side)
            momentum = (1.0 - beta) * step.old[f"m_{side}"] + beta * grad
            step.rows[f"grad_tau_{side}"] = grad
            step.rows[f"m_{side}"] = momentum
            step.rows[f"tau_{side}"] = (step.old[f"tau_{side}"] - eta * momentum).clamp_(self.tau_min, self.tau_max)

    def _extra_stats(self, step: Step, table: Table) -> dict[str, Tensor]:
        """τ-gradient mean and diagnostics of the temperatures this step used.

        `tau_grad_{side}_pos` is the share of anchors whose τ-gradient is positive (their τ falls); when
        ρ ≥ log(B−1) it is 1 on a fresh estimate (G ≥ ρ − log(B−1)), and only a stale one can bring it below.
        `tau_{side}_std` shows whether the temperatures individualise at all; `tau_{side}_at_min/max`: share of
        τ on the box's bounds.
        """
        out: dict[str, Tensor] = {}
        for side in ("I", "T"):
            grad, tau = table[f"grad_tau_{side}"], table[f"used_tau_{side}"]
            out[f"tau_grad_{side}"] = grad.mean()
            out[f"tau_grad_{side}_pos"] = (grad > 0).to(grad).mean()
            out[f"tau_{side}_std"] = tau.std(correction=0)
            out[f"tau_{side}_at_min"] = (tau <= self.tau_min * (1 + 1e-6)).to(tau).mean()
            out[f"tau_{side}_at_max"] = (tau >= self.tau_max * (1 - 1e-6)).to(tau).mean()
        if "m_I" in table:
            out["eta"] = table.values.new_tensor(self.eta_at(step.epoch))
        return out


class ISogCLRNewLoss(ISogCLRLoss):
    """The course variant with real η/β/τ-box parameters, optionally with a temperature network.

    With `temp_net = true` τ_i = net(x_i) on the detached features (one network per side) replaces the
    τ/m buffers; the network is trained by the extra term mean_i G_i·τ_i (G detached) per side, whose
    gradient is the chain rule of the τ-gradient through the network. That term only trains the network
    and is not added to the reported loss value. G is clipped as in the buffer variant.
    """

    name = "isogclr_new"

    def __init__(
        self, cfg: ISogCLRNewConfig, num_samples: int, total_epochs: int | None = None, embed_dim: int | None = None
    ) -> None:
        self.use_temp_net = bool(cfg.temp_net)
        if self.use_temp_net:
            self.state_columns = GlobalContrastiveLoss.state_columns
        super().__init__(cfg, num_samples, total_epochs, embed_dim)
        if self.use_temp_net:
            if not embed_dim:
                raise UsageError(
                    "loss.temp_net = true needs the embedding size: pass embed_dim=model.embed_dim to build_loss"
                )
            args = (int(embed_dim), int(cfg.temp_net_prototypes), self.tau_min, self.tau_max, float(cfg.tau_init))
            self.temp_net_image = TemperatureNet(*args)
            self.temp_net_text = TemperatureNet(*args)

    def _column_init(self) -> dict[str, float]:
        if self.use_temp_net:
            return GlobalContrastiveLoss._column_init(self)
        return super()._column_init()

    def _anchor_taus(self, batch: Batch, old: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if not self.use_temp_net:
            return super()._anchor_taus(batch, old)
        return self.temp_net_image(batch.x).to(batch.x.dtype), self.temp_net_text(batch.t).to(batch.x.dtype)

    def _update(self, step: Step) -> None:
        if not self.use_temp_net:
            return super()._update(step)
        for side in ("I", "T"):
            step.rows[f"grad_tau_{side}"] = self._tau_gradient(step, side)

    def _extra_loss(self, step: Step, table: Table) -> Tensor | None:
        if not self.use_temp_net:
            return None
        batch = step.batch
        term = (step.rows["grad_tau_I"] * step.tau_I).sum() + (step.rows["grad_tau_T"] * step.tau_T).sum()
        return term * (batch.world / batch.global_size)

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        if not self.use_temp_net:
            return []
        lr = self.cfg.lr_temp_net if self.cfg.lr_temp_net is not None else base_lr / 10
        params = list(self.temp_net_image.parameters()) + list(self.temp_net_text.parameters())
        return [
            {"params": params, "lr": float(lr), "weight_decay": float(self.cfg.wd_temp_net), "name": "loss.temp_net"}
        ]


class ISogCLRNewV2Loss(ISogCLRLoss):
    """Individual temperatures on raw-similarity negatives plus a KL-DRO term on the positives (λ = dro_lambda).

    Objective (specs/losses.md): F = mean_i [τ_I,i log mean_j e^{S_ij/τ_I,i} + τ_T,i log mean_j e^{S_ji/τ_T,i}
    + ρ(τ_I,i + τ_T,i)] + λ log mean_i e^{−2S_ii/λ}. The positive pair appears once, in the DRO term: the
    negatives use z_ij = S_ij/τ_i and the positive entries of the weight matrix stay zero (contrasting on
    h = S_ij − S_ii as well would pull every positive twice and collapses training from random towers).
    a_i = −2·S_ii/λ (detached); a global scalar estimate in the log domain,
    ℓ_pos ← logaddexp(log(1−γ) + ℓ_pos, log γ + logmeanexp_i a_i) (ℓ_pos = logmeanexp_i a_i in epoch 0 and
    on the first step); term mean_i[−2·exp(a_i − ℓ_pos)·S_ii], whose gradient is that of
    λ·log mean_i exp(−2S_ii/λ) with the mean tracked by e^{ℓ_pos}. ℓ_pos is part of the checkpointed state.
    """

    name = "isogclr_new_v2"
    relative_negatives = False

    def _scalar_init(self) -> dict[str, float]:
        return {"log_u_pos": -math.inf}

    def _update(self, step: Step) -> None:
        super()._update(step)
        batch = step.batch
        dtype, device = batch.x.dtype, batch.x.device
        with torch.no_grad():
            pos_sim = (batch.x_all.detach() * batch.t_all.detach()).sum(dim=1)  # S_ii of the global batch
            a = pos_sim.mul(-2.0 / float(self.cfg.dro_lambda))
            log_mean = torch.logsumexp(a, dim=0) - math.log(a.shape[0])
            log_u_pos = log_moving_average(self.state.scalar("log_u_pos", dtype, device), log_mean, step.gamma)
            local = slice(batch.offset, batch.offset + batch.local_size)
            weight = torch.exp(a[local] - log_u_pos)
            positives(step.side_I.W, batch.offset).sub_((2.0 / batch.global_size) * weight)
            step.rows["loss"] = step.rows["loss"] - (2.0 / batch.global_size) * weight * pos_sim[local]
            step.rows["dro_weight"] = weight
        step.scalars = {"log_u_pos": log_u_pos}

    def _extra_stats(self, step: Step, table: Table) -> dict[str, Tensor]:
        out = super()._extra_stats(step, table)
        out.update(log_u_pos=step.scalars["log_u_pos"], dro_weight_max=table["dro_weight"].max())
        return out
