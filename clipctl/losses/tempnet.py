"""Temperature network for `isogclr_new` with `temp_net = true`: τ(x) instead of a τ buffer per sample."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HIDDEN = 64  # MLP width: the prototype similarities carry the information; the MLP only maps them to τ


class TemperatureNet(nn.Module):
    """Cosine similarity of a (detached) embedding to M learnable prototypes → MLP (M → 64 → 1, GELU)
    → sigmoid scaled into [τ_min, τ_max].

    The output layer starts at zero weight with a bias giving τ = `tau_init` for every input, so training
    starts exactly where the per-sample variant starts and the network learns deviations from it.
    """

    def __init__(self, embed_dim: int, prototypes: int, tau_min: float, tau_max: float, tau_init: float) -> None:
        super().__init__()
        self.tau_min, self.tau_max = float(tau_min), float(tau_max)
        self.prototypes = nn.Parameter(F.normalize(torch.randn(prototypes, embed_dim), dim=1))
        self.hidden = nn.Linear(prototypes, HIDDEN)
        self.out = nn.Linear(HIDDEN, 1)
        span = max(self.tau_max - self.tau_min, 1e-12)
        frac = min(max((tau_init - self.tau_min) / span, 1e-3), 1 - 1e-3)
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.fill_(math.log(frac / (1 - frac)))

    def forward(self, features: Tensor) -> Tensor:
        """(b, d) embeddings → (b,) temperatures; gradients reach only the network, never the encoder."""
        x = features.detach().to(self.prototypes.dtype)
        sims = x @ F.normalize(self.prototypes, dim=1).T
        logit = self.out(F.gelu(self.hidden(sims))).squeeze(1)
        return self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(logit)
