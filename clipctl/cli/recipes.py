"""`clipctl recipes ls|show|cp|validate`."""

from __future__ import annotations

from pathlib import Path

import tomli_w
import typer

from clipctl import recipe as recipes_lib
from clipctl.atomic import atomic_write_text
from clipctl.console import console, emit_json, info, print_listing, warn
from clipctl.errors import UsageError

app = typer.Typer(
    help="List, show, copy and validate recipes.\n\nExample: clipctl recipes validate recipes/*.toml",
    no_args_is_help=True,
)


def is_study_recipe(name: str) -> bool:
    """Recipes under recipes/study*/ are the repository's studies' cells (run through `clipctl study`, read
    by bench/), not starting points: `recipes ls` hides them unless --all."""
    return name.split("/", 1)[0].startswith("study")


@app.command("ls")
def ls(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable list on stdout."),
    show_all: bool = typer.Option(False, "--all", help="Also list the studies' recipes (recipes/study*/)."),
) -> None:
    """List the built-in train and tune recipes with their one-line descriptions, on stdout (a table on a
    terminal, tab-separated lines in a pipe).  Example: clipctl recipes ls | grep sogclr"""
    root = recipes_lib.builtin_recipes_dir()
    names = recipes_lib.builtin_recipe_names()
    shown = [n for n in names if show_all or not is_study_recipe(n)]
    rows = [(name, recipes_lib.describe(root / f"{name}.toml")) for name in shown]
    if as_json:
        emit_json([{"name": n, "description": d} for n, d in rows])
        return
    print_listing("built-in recipes", ["name", "description"], rows)
    if len(shown) < len(names):
        info(
            f"{len(names) - len(shown)} study recipes (recipes/study*/) not listed; `clipctl recipes ls --all` lists them"
        )


@app.command("show")
def show(
    name: str = typer.Argument(..., help="Built-in name (isogclr_radam, tune/phase1) or a path."),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, applied last."),
    resolved: bool = typer.Option(
        False, "--resolved", help="Print every key with defaults, extends and overrides applied."
    ),
) -> None:
    """Print a recipe.  Example: clipctl recipes show isogclr_radam --resolved"""
    path = recipes_lib.find_recipe(name)
    if not resolved:
        typer.echo(path.read_text(encoding="utf-8"), nl=False)
        return
    raw = recipes_lib.apply_overrides(recipes_lib.load_raw(path), overrides or [])
    if "tune" in raw:
        from clipctl.tune.recipe import load_tune_recipe

        tune, _ = load_tune_recipe(path, overrides or [])
        typer.echo(tomli_w.dumps(tune.model_dump()), nl=False)
        return
    recipe = recipes_lib.load_recipe(path, overrides or [])
    typer.echo(f"# resolved from {path}; sha256 {recipe.sha256()}")
    typer.echo(recipe.to_toml(), nl=False)


@app.command("cp")
def cp(
    name: str = typer.Argument(..., help="Built-in recipe name."),
    dest: Path = typer.Argument(..., help="Destination file (must not exist)."),
) -> None:
    """Copy a built-in recipe to edit it.  Example: clipctl recipes cp quickstart my.toml"""
    source = recipes_lib.find_recipe(name)
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists():
        raise UsageError(f"{dest}: already exists; choose another destination or delete it first")
    if not dest.parent.is_dir():
        raise UsageError(f"{dest.parent}: no such folder; create it first or copy to an existing folder")
    text = source.read_text(encoding="utf-8")
    if "extends" in recipes_lib.read_toml(source):
        recipe = recipes_lib.load_recipe(source)
        text = (
            f"# {recipes_lib.describe(source)} (copied from {name} with its base recipes merged)\n" + recipe.to_toml()
        )
    atomic_write_text(dest, text)
    info(f"copied {source} -> {dest}")


@app.command("validate")
def validate(
    paths: list[str] = typer.Argument(
        ..., help="Recipe files or built-in names; trailing key=value overrides apply to each."
    ),
) -> None:
    """Validate recipes (train or tune); exit 2 on the first invalid one.  Example: clipctl recipes validate recipes/*.toml"""
    files = [p for p in paths if "=" not in p]
    overrides = [p for p in paths if "=" in p]
    if not files:
        raise UsageError("recipes validate: give at least one recipe file or name")
    for item in files:
        path = recipes_lib.find_recipe(item)
        if "tune" in recipes_lib.read_toml(path):
            from clipctl.tune.recipe import load_tune_recipe

            load_tune_recipe(path, overrides)
            kind = "tune recipe"
        else:
            for message in recipes_lib.recipe_warnings(recipes_lib.load_recipe(path, overrides)):
                warn(f"{path}: {message}")
            kind = "recipe"
        console().print(f"[green]ok[/green] {path} ({kind})")
