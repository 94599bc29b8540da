"""`clipctl study run | paired | by-batch | diagnostics`: a study's grid and seeds, and what is read from it."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer

from clipctl.console import info
from clipctl.errors import UsageError
from clipctl.report.text import printable

app = typer.Typer(
    help="Studies: a value chosen per recipe on the validation split, seeds trained with it, then paired "
    "per-seed differences (95% intervals, sign tests), the score against the batch and the loss diagnostics.\n\n"
    "Example: clipctl study run recipes/study2/a --key optim.lr --factors 0.5,1,2 --seeds 0,1,2 "
    "--grid-out runs/study2/a-grid --out runs/study2/a --results bench/results/study2/a",
    no_args_is_help=True,
)

T = TypeVar("T")
COMPARE_JSON_HELP = "The study's `clipctl compare RUNS --json` output (compare.json)."
OUT_HELP = "Folder to write to (default: beside COMPARE_JSON)."


def _list(option: str, text: str | None, kind: Callable[[str], T]) -> list[T] | None:
    """A list option given as one value, comma- or space-separated (`0.5,1,2` or "0 1 2")."""
    if text is None:
        return None
    items = [item for item in re.split(r"[,\s]+", text) if item]
    try:
        parsed = [kind(item) for item in items]
    except ValueError:
        raise UsageError(f"{option} {text!r}: give {kind.__name__} values separated by commas, e.g. 0.5,1,2") from None
    if not parsed:
        raise UsageError(f"{option}: empty; give at least one value, e.g. {option} 0.5,1,2")
    return parsed


def _announce(paths: list[Path]) -> None:
    for path in paths:
        info(f"wrote {printable(str(path))}")


# Over 60 lines: most of them declare its Typer options; the body only parses, calls and renders.
@app.command("run")
def run(
    recipes: Path = typer.Argument(..., help="A study recipe, or a folder of them (its base*.toml are left out)."),
    key: str = typer.Option(..., "--key", help="The recipe key the grid varies, e.g. optim.lr."),
    values: str | None = typer.Option(
        None, "--values", help="Grid values as given, comma-separated, e.g. 1e-3,3e-4,1e-4."
    ),
    factors: str | None = typer.Option(
        None, "--factors", help="Grid as factors of each recipe's own value, e.g. 0.5,1,2 (default 1)."
    ),
    seeds: str = typer.Option("0", "--seeds", help="Seeds, comma- or space-separated; seed 0 is the grid's run."),
    grid_out: Path = typer.Option(..., "--grid-out", help="Where the grid runs (seed 0) go."),
    out: Path | None = typer.Option(None, "--out", help="Where the final runs go (needed with seeds besides 0)."),
    results: Path = typer.Option(..., "--results", help="Where grid.json and the study's tables and plots go."),
    jobs: int = typer.Option(2, "--jobs", min=1, help="Runs trained at a time (the CPU's threads split between)."),
    widen: int = typer.Option(2, "--widen", min=0, help="At most this many points added beyond a grid's edge."),
) -> None:
    """Choose a value per recipe on the validation split (seed 0), train the other seeds with it, compare.

    Each recipe's best grid value by its best epoch's val/objective is chosen; when it is the grid's smallest or largest, the next point beyond (same ratio) is trained and the choice made again, at most --widen times. Finished runs are kept and killed ones resume, so rerunning completes what is missing. A final run at another value than the chosen one stops the study (exit 4). Results: grid.json, compare.{md,json,png}, paired.{md,json}, by_batch.png, diagnostics.{md,json}.

    Example: clipctl study run recipes/study2/a --key optim.lr --factors 0.5,1,2 --seeds 0,1,2 --grid-out runs/study2/a-grid --out runs/study2/a --results bench/results/study2/a
    """
    from clipctl.report.study.runner import StudyPlan, run_study, study_recipes

    if values is not None and factors is not None:
        raise UsageError("--values and --factors: give one (values as given, or factors of each recipe's value)")
    plan = StudyPlan(
        recipes=study_recipes(recipes),
        key=key,
        values=_list("--values", values, str),
        factors=_list("--factors", factors, float),
        seeds=_list("--seeds", seeds, int) or [0],
        grid_out=grid_out,
        out=out,
        results=results,
        parallel=jobs,
        widen=widen,
    )
    _announce(run_study(plan))


@app.command("paired")
def paired(
    compare_json: Path = typer.Argument(..., help=COMPARE_JSON_HELP),
    out: Path | None = typer.Option(None, "--out", help=OUT_HELP),
) -> None:
    """Paired per-seed differences of every two groups that differ in one factor (towers, loss, batch): mean, 95% t-interval, sign count and sign-test p; a difference is called only where the interval excludes 0. Writes paired.{md,json}.

    Example: clipctl study paired bench/results/study2/a/compare.json
    """
    from clipctl.report.study.paired import write_paired

    _announce([write_paired(compare_json, out)])


@app.command("by-batch")
def by_batch(
    compare_json: Path = typer.Argument(..., help=COMPARE_JSON_HELP),
    out: Path | None = typer.Option(None, "--out", help=OUT_HELP),
) -> None:
    """The test average of each recipe family (<towers>_<loss>) against its global batch (<name>_b<N>). Writes by_batch.png.

    Example: clipctl study by-batch bench/results/study2/a/compare.json
    """
    from clipctl.report.study.by_batch import plot_by_batch

    _announce([plot_by_batch(compare_json, out)])


@app.command("diagnostics")
def diagnostics(
    runs: Path = typer.Argument(..., help="The study's folder of final runs (<group>-seed<N>)."),
    results: Path = typer.Argument(..., help="Where diagnostics.{md,json} go."),
) -> None:
    """The loss diagnostics of a study's completed runs per group: τ mean and spread, share at τ's bounds and of positive τ-gradients, staleness of the moving estimates. Writes diagnostics.{md,json}.

    Example: clipctl study diagnostics runs/study2/a bench/results/study2/a
    """
    from clipctl.report.study.diagnostics import write_diagnostics

    _announce([write_diagnostics(runs, results)])
