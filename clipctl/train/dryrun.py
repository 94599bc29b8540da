"""`clipctl train --dry-run`: what would run, and how long, measured on five real updates; writes nothing.

The trainer performs the updates (`Trainer.dry_run`); this module times them and writes the plan.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from clipctl.console import format_duration
from clipctl.recipe import Recipe

MEASURED_STEPS = 5


def time_updates(update: Callable[[list[Any]], object], loader: Iterator[Any], accum: int, steps: int) -> list[float]:
    """Seconds of each of `steps` updates, each over `accum` micro-batches drawn from `loader`."""
    durations = []
    for _ in range(steps):
        start = time.perf_counter()
        update([next(loader) for _ in range(accum)])
        durations.append(time.perf_counter() - start)
    return durations


def dry_run_plan(
    recipe: Recipe,
    durations: list[float],
    *,
    run_dir: Path,
    world_size: int,
    device: str,
    precision: str,
    chosen_by: dict[str, str],
    num_samples: int,
    steps_per_epoch: int,
) -> dict[str, Any]:
    """Extrapolate the timed updates (the first is warm-up and not counted) to the whole recipe; `chosen_by` says
    where the device and precision came from (the recipe, the launcher, or auto)."""
    timed = durations[1:] or durations
    seconds_per_step = sum(timed) / len(timed)
    total_steps = steps_per_epoch * recipe.train.epochs
    if recipe.train.max_steps:
        total_steps = min(total_steps, recipe.train.max_steps)
    return {
        "run_dir": str(run_dir),
        "world_size": world_size,
        "device": device,
        "precision": precision,
        **chosen_by,
        "num_samples": num_samples,
        "steps_per_epoch": steps_per_epoch,
        "epochs": recipe.train.epochs,
        "total_steps": total_steps,
        "seconds_per_step": seconds_per_step,
        "measured_steps": len(timed),
        "eta_s": seconds_per_step * total_steps,
        "eta": format_duration(seconds_per_step * total_steps) + " (training only; evaluation not included)",
        "recipe_toml": recipe.to_toml(),
    }
