"""`clipctl train --dry-run`: what would run, and how long, measured on five real updates; writes nothing."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from clipctl.console import format_duration

if TYPE_CHECKING:
    from clipctl.train.trainer import Trainer

MEASURED_STEPS = 5


def dry_run(trainer: "Trainer") -> dict[str, Any]:
    """Time a few updates (the first is warm-up and not counted) and extrapolate to the whole recipe."""
    recipe = trainer.recipe
    loader = iter(trainer.parts.train_loader(0, start_batch=0))
    accum = recipe.train.grad_accum
    steps = min(MEASURED_STEPS + 1, trainer.steps_per_epoch)
    durations = []
    for _ in range(steps):
        start = time.perf_counter()
        batches = [next(loader) for _ in range(accum)]
        trainer._update(batches, epoch=0)
        durations.append(time.perf_counter() - start)
    timed = durations[1:] or durations
    seconds_per_step = sum(timed) / len(timed)
    total_steps = trainer.steps_per_epoch * recipe.train.epochs
    if recipe.train.max_steps:
        total_steps = min(total_steps, recipe.train.max_steps)
    return {
        "run_dir": str(trainer.run.root),
        "world_size": trainer.world,
        "device": str(trainer.accelerator.device),
        "precision": trainer.accelerator.mixed_precision,
        "num_samples": trainer.parts.num_samples,
        "steps_per_epoch": trainer.steps_per_epoch,
        "epochs": recipe.train.epochs,
        "total_steps": total_steps,
        "seconds_per_step": seconds_per_step,
        "measured_steps": len(timed),
        "eta_s": seconds_per_step * total_steps,
        "eta": format_duration(seconds_per_step * total_steps) + " (training only; evaluation not included)",
        "recipe_toml": recipe.to_toml(),
    }
