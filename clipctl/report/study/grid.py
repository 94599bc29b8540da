"""Choosing one value per recipe on the VALIDATION split: the grid's points, the best of them, and the point
beyond an edge. Only `best` of each grid run's summary (the validation metrics of its selected epoch) is read;
the test split is left to the final runs' own end-of-training test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clipctl.errors import UsageError
from clipctl.recipe import load_recipe
from clipctl.report.study.diagnostics import last_train_record
from clipctl.report.study.jobs import Job
from clipctl.run.layout import RunDir

OBJECTIVE = "val/objective"


def recipe_value(recipe: Path, key: str, overrides: list[str] | None = None) -> Any:
    """The value of the dotted `key` in the resolved recipe (with `overrides`); the recipe's own validation
    refuses an unknown key or a value of the wrong type."""
    value: Any = load_recipe(recipe, overrides)
    for part in key.split("."):
        if not hasattr(value, part):
            raise UsageError(f"{recipe}: {key}: no such recipe key; see clipctl recipes show {recipe} --resolved")
        value = getattr(value, part)
    return value


def grid_values(recipe: Path, key: str, values: list[str] | None, factors: list[float] | None) -> list[str]:
    """`values` as given, or `factors` times the recipe's own value (3 significant digits); each checked against
    the recipe before anything trains."""
    if not values:
        base = recipe_value(recipe, key)
        if isinstance(base, bool) or not isinstance(base, (int, float)):
            raise UsageError(f"{recipe}: {key} = {base!r} is not a number, so --factors cannot scale it; give --values")
        values = [f"{base * factor:.3g}" for factor in factors or [1.0]]
    for value in values:
        recipe_value(recipe, key, [f"{key}={value}"])
    return values


def grid_rows(jobs: list[Job], runs: list[Path]) -> list[dict[str, Any]]:
    """One row per grid run: its value, best epoch, validation objective and last logged diagnostics."""
    rows = []
    for job, run_dir in zip(jobs, runs, strict=True):
        summary = json.loads(RunDir(run_dir).summary.read_text(encoding="utf-8"))
        rows.append(
            {
                "recipe": job.recipe.stem,
                "value": job.value,
                "run": job.name,
                "best_epoch": summary["best_epoch"],
                "val_objective": summary["best"][OBJECTIVE],
                "last_train": last_train_record(run_dir),
            }
        )
    return rows


def cell_rows(rows: list[dict[str, Any]], stem: str) -> list[dict[str, Any]]:
    return [row for row in rows if row["recipe"] == stem]


def chosen(rows: list[dict[str, Any]], stems: list[str]) -> dict[str, str]:
    """Per recipe, the value whose run scored the highest validation objective."""
    return {stem: max(cell_rows(rows, stem), key=lambda row: row["val_objective"])["value"] for stem in stems}


def widened(values: list[str], best: str) -> str | None:
    """The point beyond the grid's edge when `best` is that edge (same ratio as to its neighbour), else None:
    a best value on the edge says the optimum may lie outside the grid."""
    ordered = sorted(values, key=float)
    if len(ordered) < 2 or best not in (ordered[0], ordered[-1]):
        return None
    edge, inner = (ordered[-1], ordered[-2]) if best == ordered[-1] else (ordered[0], ordered[1])
    return f"{float(edge) ** 2 / float(inner):.3g}"
