"""`cyclip`: CLIP plus CyCLIP's consistency regularisers (Goel et al. 2022).

    L = L_clip + λ_in · (1/B) Σ_{j,k} (x_j·x_k − t_j·t_k)² + λ_cross · (1/B) Σ_{j,k} (x_j·t_k − t_j·x_k)²

i.e. ‖S_II − S_TT‖²/B and ‖S_IT − S_TI‖²/B with S_II = X Xᵀ, S_TT = T Tᵀ, S_IT = X Tᵀ, S_TI = T Xᵀ = S_ITᵀ, on raw
cosine similarities (no temperature). L_clip is `clip` exactly, with its fixed or learnable τ.

Normalisation: 1/B times the sum over the B² entries, not the mean over them: the authors' training code takes the
mean over the B² entries and multiplies it by the batch size, so λ = 0.25 weighs the terms as in the paper's runs
(a mean over B² would weaken them B-fold). Against the InfoNCE term (≈ log B) these terms grow about linearly
with B at a fixed geometry: a λ tuned at one batch size is not the same regularisation at another.

Multi-process: local rows against global columns, as every clipctl loss (base module docstring): rank r adds its
rows j of both sums over all k, so the shares sum to the single-process value on the global batch.
"""

from __future__ import annotations

from torch import Tensor

from clipctl.losses.base import Batch
from clipctl.losses.clip import CLIPLoss


class CyCLIPLoss(CLIPLoss):
    name = "cyclip"

    def _terms(self, batch: Batch, S_I: Tensor, S_T: Tensor) -> dict[str, Tensor]:
        in_modal = batch.x @ batch.x_all.T - batch.t @ batch.t_all.T  # rows j of S_II − S_TT
        cross_modal = S_I - S_T  # rows j of S_IT − S_TI (S_T holds row j of T Xᵀ)
        B = batch.global_size
        return {
            **super()._terms(batch, S_I, S_T),
            "in_modal": in_modal.square().sum() / B,
            "cross_modal": cross_modal.square().sum() / B,
        }

    def _weights(self) -> dict[str, float]:
        return {
            **super()._weights(),
            "in_modal": float(self.cfg.lambda_in_modal),
            "cross_modal": float(self.cfg.lambda_cross_modal),
        }
