"""Learning-rate schedules through timm, stepped once per optimizer update.

The loss's own parameter groups (a learnable τ, the temperature network: groups named `loss.*`) follow the
model's schedule RELATIVE to their own learning rate: floor and warmup start scale with the group's lr, so a
group whose lr is below the model's `min_lr` decays instead of rising towards it. `sched.loss_min_lr` and
`sched.loss_warmup_lr` give them absolute values instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler

from clipctl.errors import UsageError
from clipctl.recipe import SchedConfig

_TIMM_NAMES = {"cosine": "cosine", "tanh": "tanh", "step": "step", "const": "constant"}
LOSS_GROUP_PREFIX = "loss."


@dataclass
class _GroupsView:
    """What a timm scheduler reads of an optimizer: its param groups, here the ones at `positions`. Looked up at
    every read: `optimizer.load_state_dict` (a resume, Accelerate's prepare) replaces the group dicts."""

    optimizer: torch.optim.Optimizer
    positions: list[int]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [self.optimizer.param_groups[i] for i in self.positions]


class ParamGroupSchedules:
    """One timm schedule for the model's groups and one per loss group, stepped together."""

    def __init__(self, parts: dict[str, Scheduler]) -> None:
        self.parts = parts

    def step_update(self, num_updates: int) -> None:
        for scheduler in self.parts.values():
            scheduler.step_update(num_updates)

    def state_dict(self) -> dict[str, Any]:
        return {name: scheduler.state_dict() for name, scheduler in self.parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A state saved with one schedule for every group (before loss groups had their own) is the model's;
        a loss group's schedule is a function of the update count alone, so it needs no saved state."""
        if "model" not in state:
            state = {"model": state}
        for name, scheduler in self.parts.items():
            if name in state:
                scheduler.load_state_dict(state[name])


def _timm_scheduler(
    groups: _GroupsView, cfg: SchedConfig, epochs: int, updates_per_epoch: int, min_lr: float, warmup_lr: float
) -> Scheduler:
    """A per-update schedule whose warmup, decay and cooldown all fit inside `epochs` training epochs.

    timm appends cooldown after the schedule; clipctl keeps `train.epochs` the total, so the decay phase
    lasts `epochs - cooldown_epochs` (warmup included) and the last `cooldown_epochs` hold `min_lr`.
    """
    decay_length = max(epochs - cfg.cooldown_epochs, 1e-9)
    scheduler, _ = create_scheduler_v2(
        groups,  # type: ignore[arg-type]
        sched=_TIMM_NAMES[cfg.name],
        num_epochs=decay_length,
        decay_epochs=cfg.decay_epochs,
        decay_rate=cfg.decay_rate,
        min_lr=min_lr,
        warmup_lr=warmup_lr,
        warmup_epochs=cfg.warmup_epochs,
        cooldown_epochs=cfg.cooldown_epochs,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    scheduler.step_update(0)
    return scheduler


def _loss_group_limits(group: dict[str, Any], cfg: SchedConfig, model_lr: float) -> tuple[float, float]:
    """(floor, warmup start) of one loss group: the recipe's absolute values, else the model's scaled by lr."""
    lr, name = float(group["lr"]), group.get("name", "loss")
    floor = cfg.loss_min_lr if cfg.loss_min_lr is not None else cfg.min_lr * lr / model_lr
    start = cfg.loss_warmup_lr if cfg.loss_warmup_lr is not None else cfg.warmup_lr * lr / model_lr
    if floor > lr:
        raise UsageError(
            f"sched.loss_min_lr = {floor:g} exceeds the learning rate {lr:g} of the loss's group {name!r}, which "
            "would rise over the run; set sched.loss_min_lr at most that lr, or leave it unset (relative floor)"
        )
    return floor, start


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedConfig, epochs: int, updates_per_epoch: int
) -> ParamGroupSchedules:
    """The model's schedule (`sched.*`) and, for each `loss.*` group, the same shape between its own limits."""
    groups = optimizer.param_groups
    is_loss = [str(g.get("name", "")).startswith(LOSS_GROUP_PREFIX) for g in groups]
    model_positions = [i for i, loss in enumerate(is_loss) if not loss]
    model_lr = float(groups[model_positions[0]]["lr"]) if model_positions else float(optimizer.defaults["lr"])
    parts = {}
    if model_positions:
        view = _GroupsView(optimizer, model_positions)
        parts["model"] = _timm_scheduler(view, cfg, epochs, updates_per_epoch, cfg.min_lr, cfg.warmup_lr)
    for i in (i for i, loss in enumerate(is_loss) if loss):
        floor, start = _loss_group_limits(groups[i], cfg, model_lr)
        parts[groups[i]["name"]] = _timm_scheduler(
            _GroupsView(optimizer, [i]), cfg, epochs, updates_per_epoch, floor, start
        )
    return ParamGroupSchedules(parts)
