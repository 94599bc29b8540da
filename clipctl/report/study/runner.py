"""Run a study: for every recipe in a folder, choose one value on the validation split (seed 0, a small grid,
widened at an edge), then train the other seeds with the chosen value and write what is read from them.

The chosen seed-0 run is copied into the final folder (same recipe, same seed: the same run), the other seeds
are trained there, then `results.write_study_results` writes the comparison, paired differences, by-batch plot
and diagnostics beside `grid.json` (every grid run's validation objective and last logged diagnostics).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipctl.atomic import atomic_write_json
from clipctl.console import info
from clipctl.errors import RunConflictError, UsageError
from clipctl.report.study import jobs
from clipctl.report.study.grid import cell_rows, chosen, grid_rows, grid_values, widened
from clipctl.report.study.jobs import Job
from clipctl.report.study.results import write_study_results


@dataclass(frozen=True)
class StudyPlan:
    """What `clipctl study run` was asked: the grid (values, or factors of each recipe's own value), the seeds,
    where grid runs, final runs and results go, runs at a time, and how many points an edge may add."""

    recipes: list[Path]
    key: str
    values: list[str] | None
    factors: list[float] | None
    seeds: list[int]
    grid_out: Path
    out: Path | None
    results: Path
    parallel: int = 2
    widen: int = 2


@dataclass
class Choice:
    """The grid's outcome: every grid run's row, the value chosen per recipe, the points added beyond an edge,
    and the point that would come next for a cell still at its edge."""

    rows: list[dict[str, Any]]
    chosen: dict[str, str]
    widened: dict[str, list[str]]
    beyond: dict[str, str | None]


def study_recipes(path: Path) -> list[Path]:
    """A recipe file, or every recipe in a folder except its `base*` ones (what the cells extend)."""
    if not path.exists():
        raise UsageError(f"{path}: no such recipe file or folder; pass a folder of study recipes (recipes/study2/a)")
    found = sorted(path.glob("*.toml")) if path.is_dir() else [path]
    found = [r for r in found if not r.stem.startswith("base")]
    if not found:
        raise UsageError(f"{path}: no recipe (*.toml other than base*.toml) in it; pass a folder of study recipes")
    return found


def check_plan(plan: StudyPlan) -> None:
    if plan.out is None and any(seed != 0 for seed in plan.seeds):
        raise UsageError("seeds besides 0 train final runs: give --out, the folder they go to")


def choose(plan: StudyPlan) -> Choice:
    """Train the grid on seed 0 and choose per recipe; a cell whose best value is an edge gets the next point
    beyond it and the choice is made again, at most `plan.widen` times."""
    values = {r.stem: grid_values(r, plan.key, plan.values, plan.factors) for r in plan.recipes}
    added: dict[str, list[str]] = {r.stem: [] for r in plan.recipes}
    for round_ in range(plan.widen + 1):
        grid = [Job(r, plan.key, v, 0, plan.grid_out) for r in plan.recipes for v in values[r.stem]]
        rows = grid_rows(grid, jobs.run_all(grid, plan.parallel))
        best = chosen(rows, list(values))
        beyond = {stem: widened(values[stem], value) for stem, value in best.items()}
        if round_ == plan.widen or not any(beyond.values()):
            break
        for stem, value in beyond.items():
            if value is not None:
                info(f"study: {stem}: best {plan.key} = {best[stem]} is the grid's edge; adding {value}")
                values[stem].append(value)
                added[stem].append(value)
    return Choice(rows, best, added, beyond)


def announce(choice: Choice, key: str) -> None:
    for stem, best in choice.chosen.items():
        scores = ", ".join(f"{row['value']}: {100 * row['val_objective']:.2f}" for row in cell_rows(choice.rows, stem))
        edge = " (still the grid's edge)" if choice.beyond[stem] else ""
        info(f"{stem}: {key} = {best} chosen on validation{edge} ({scores})")


def write_grid(choice: Choice, plan: StudyPlan) -> Path:
    """grid.json in the results folder: every grid run, the choice, what was added and what is still an edge."""
    plan.results.mkdir(parents=True, exist_ok=True)
    payload = {
        "key": plan.key,
        "selected_on": "validation split (best epoch's val/objective), seed 0",
        "rows": choice.rows,
        "chosen": choice.chosen,
        "widened": choice.widened,
        "still_at_edge": sorted(stem for stem, value in choice.beyond.items() if value),
        "load": [f"{load:.2f}" for load in os.getloadavg()],
    }
    atomic_write_json(plan.results / "grid.json", payload, indent=2)
    return plan.results / "grid.json"


def refuse_other_values(out: Path, key: str, values: dict[str, str]) -> None:
    """Final runs of a cell at a value other than its chosen one (the grid changed since) would be compared with
    the new ones as one group: stop before training and say which."""
    field = key.split(".")[-1]
    for stem, value in values.items():
        for run_dir in sorted(out.glob(f"{stem}-{field}-*-seed*")):
            if run_dir.name.rsplit("-seed", 1)[0] != f"{stem}-{field}-{value}":
                raise RunConflictError(
                    f"study: {run_dir} was trained at another {key} than the chosen {value}; move it out of "
                    f"{out} (compare would group it with the new runs)"
                )


def train_finals(plan: StudyPlan, out: Path, values: dict[str, str]) -> None:
    """Seed 0 copied from the grid, the other seeds trained in `out` at each recipe's chosen value."""
    refuse_other_values(out, plan.key, values)
    final = []
    for recipe in plan.recipes:
        picked = Job(recipe, plan.key, values[recipe.stem], 0, plan.grid_out)
        if 0 in plan.seeds and not (out / picked.name).exists():
            out.mkdir(parents=True, exist_ok=True)
            shutil.copytree(picked.run_dir, out / picked.name)
        final += [Job(recipe, plan.key, values[recipe.stem], seed, out) for seed in plan.seeds if seed != 0]
    jobs.run_all(final, plan.parallel)


def run_study(plan: StudyPlan) -> list[Path]:
    """The whole study; the files written to the results folder (grid.json alone without final runs)."""
    check_plan(plan)
    choice = choose(plan)
    announce(choice, plan.key)
    written = [write_grid(choice, plan)]
    if plan.out is None:
        return written
    train_finals(plan, plan.out, choice.chosen)
    return written + write_study_results(plan.out, plan.results)
