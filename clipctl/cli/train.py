"""`clipctl train`."""

from __future__ import annotations

from pathlib import Path

import typer

from clipctl.console import emit_json, info, print_table, warn
from clipctl.recipe import load_recipe, recipe_warnings


def train(
    recipe: str = typer.Argument(..., help="Recipe file or built-in name (quickstart, isogclr_radam, ...)."),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, e.g. train.epochs=5 optim.lr=3e-4"),
    out: Path | None = typer.Option(None, "--out", help="Parent folder of the run directory (default: run.out_dir)."),
    name: str | None = typer.Option(
        None, "--name", help="Run directory name (default: run.name or the recipe's stem)."
    ),
    resume: str | None = typer.Option(
        None,
        "--resume",
        help="auto (continue the run from its state) | restart (auto, but a run stopped before its first save "
        "starts over in place) | never | PATH (a run directory or state file).",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan and an ETA from five measured steps; write nothing."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary (or dry-run plan) as JSON on stdout."),
) -> None:
    """Train a model from a recipe into runs/<name>/.  Example: clipctl train quickstart train.epochs=2"""
    from clipctl.train.trainer import TrainOptions
    from clipctl.train.trainer import train as run_training

    resolved = load_recipe(recipe, overrides or [])
    for message in recipe_warnings(resolved):
        warn(message)
    result = run_training(resolved, TrainOptions(out_dir=out, name=name, resume=resume, dry_run=dry_run))
    if as_json:
        emit_json({k: v for k, v in result.items() if k != "recipe_toml"})
        return
    if dry_run:
        typer.echo(result["recipe_toml"], err=True)
        rows = [(k, v) for k, v in result.items() if k != "recipe_toml"]
        print_table("dry run (nothing written)", ["item", "value"], rows)
        return
    test = result.get("test") or {}
    rows = [(key.upper(), f"{100 * test[key]:.2f}") for key in ("tr@1", "ir@1", "acc@1", "objective") if key in test]
    best = result["best_epoch"]
    print_table(
        f"{result['name']}: test metrics of the best epoch ({best if best is not None else '-'})",
        ["metric", "%"],
        rows,
    )
    samples = result.get("samples_per_s")
    info(f"wall time {result['wall_time_s']:.1f} s training, {samples:.1f} samples/s" if samples else "")
