"""Per-epoch schedules of the GCL moving-average weight γ and the iSogCLR temperature step size η."""

from __future__ import annotations

import math

from clipctl.errors import UsageError

# `exp` decays η by this factor over the run (η_E = η_0 / 100): long enough to matter, never zero.
ETA_EXP_FINAL_FRACTION = 0.01


def gamma_at(epoch: int, schedule: str, gamma: float, gamma_min: float, decay_epochs: int) -> float:
    """γ for an epoch (specs/losses.md step 4).

    Epoch 0 always uses γ = 1 (s_i ← ĝ_i: the first visit has nothing to average with).
    `constant`: `gamma`. `cosine`: γ_e = γ_min + ½(1−γ_min)(1+cos(π e/E)) for 0 < e < E, γ_min after.
    """
    if epoch <= 0:
        return 1.0
    if schedule == "constant":
        return gamma
    if epoch >= decay_epochs:
        return gamma_min
    return gamma_min + 0.5 * (1.0 - gamma_min) * (1.0 + math.cos(math.pi * epoch / decay_epochs))


def eta_at(epoch: int, schedule: str, eta_init: float, total_epochs: int | None) -> float:
    """η for an epoch; `cosine` and `exp` need the run length E (`total_epochs`).

    const:  η_e = η_0
    cosine: η_e = η_0 · ½(1 + cos(π · min(e, E)/E))      (η_0 at the start, 0 at the horizon)
    exp:    η_e = η_0 · 0.01^(e/E)                       (geometric decay to η_0/100 at the horizon)
    Both decays are defined relative to the run length so a short tuning run sees the same shape as a
    full one.
    """
    if schedule == "const":
        return eta_init
    if not total_epochs or total_epochs < 1:
        raise UsageError(
            f"loss.eta_schedule = {schedule!r} needs the run length: pass total_epochs= to build_loss "
            '(the trainer passes train.epochs) or use eta_schedule = "const"'
        )
    if schedule == "cosine":
        return eta_init * 0.5 * (1.0 + math.cos(math.pi * min(epoch, total_epochs) / total_epochs))
    if schedule == "exp":
        return eta_init * ETA_EXP_FINAL_FRACTION ** (epoch / total_epochs)
    raise UsageError(f"loss.eta_schedule = {schedule!r}: expected const, cosine or exp")
