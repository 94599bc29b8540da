"""Learning-rate schedules through timm, stepped once per optimizer update."""

from __future__ import annotations

import torch
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler

from clipctl.recipe import SchedConfig

_TIMM_NAMES = {"cosine": "cosine", "tanh": "tanh", "step": "step", "const": "constant"}


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedConfig, epochs: int, updates_per_epoch: int
) -> Scheduler:
    """A per-update schedule whose warmup, decay and cooldown all fit inside `epochs` training epochs.

    timm appends cooldown after the schedule; clipctl keeps `train.epochs` the total, so the decay phase
    lasts `epochs - cooldown_epochs` (warmup included) and the last `cooldown_epochs` hold `min_lr`.
    """
    decay_length = max(epochs - cfg.cooldown_epochs, 1e-9)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=_TIMM_NAMES[cfg.name],
        num_epochs=decay_length,
        decay_epochs=cfg.decay_epochs,
        decay_rate=cfg.decay_rate,
        min_lr=cfg.min_lr,
        warmup_lr=cfg.warmup_lr,
        warmup_epochs=cfg.warmup_epochs,
        cooldown_epochs=cfg.cooldown_epochs,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    scheduler.step_update(0)
    return scheduler
