"""`clipctl eval`: the benchmark shorthands (`--coco`, `--shapes`, ...) come from the dataset records, so they are
read from the words Typer leaves unparsed (`clipctl.cli.records`)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from clipctl.cli.records import EXTRA_ARGS, split_words, table_help
from clipctl.console import emit_json, info, print_table
from clipctl.errors import UsageError
from clipctl.schema import closest

COLUMNS = ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "acc@1", "acc@5", "objective")


def _cell(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    return f"{100 * value:.2f}" if isinstance(value, (int, float)) else "-"


def _scored_line(metrics: dict) -> str:
    """'45 of 48 retrieval images, 64 of 64 zero-shot images' ('' for the combined row)."""
    return ", ".join(
        f"{metrics[f'{kind}_scored']} of {metrics[f'{kind}_total']} {label} images"
        for kind, label in (("retrieval", "retrieval"), ("zeroshot", "zero-shot"))
        if f"{kind}_total" in metrics
    )


def _scored(metrics: dict) -> str:
    """Images scored / images listed, over the benchmark's retrieval and zero-shot sets."""
    kinds = [k for k in ("retrieval", "zeroshot") if f"{k}_total" in metrics]
    if not kinds:
        return "-"
    return f"{sum(metrics[f'{k}_scored'] for k in kinds)}/{sum(metrics[f'{k}_total'] for k in kinds)}"


def _benchmarks_help() -> str:
    from clipctl.evaluate.benchmarks import shorthand_flags

    rows = "\n\n".join(f"--{flag}: {text}" for flag, text in shorthand_flags().items())
    return f"Benchmarks (shorthands from the dataset records; --dataset ID evaluates the same):\n\n{rows}"


def _check_flags(flags: list[str], known: list[str]) -> None:
    for name in flags:
        if name not in known:
            hint = closest(name, [*known, *DECLARED])
            more = f"did you mean --{hint}? " if hint else ""
            raise UsageError(f"--{name}: no such option; {more}benchmarks: {', '.join('--' + f for f in known)}")


DECLARED = ("json", "dataset", "data-root", "max-missing", "help")


def eval_command(
    ctx: typer.Context,
    checkpoint: str = typer.Argument(
        ..., metavar="CHECKPOINT", help="A clipctl checkpoint, e.g. runs/quickstart/ckpt.pt."
    ),
    dataset: list[str] = typer.Option(
        [],
        "--dataset",
        metavar="ID_OR_PATH[:split]",
        help="Also evaluate this (repeatable): a dataset id (its benchmark, e.g. shapes = --shapes), ID:split "
        "(e.g. imagenet-val:val), or a path to a retrieval JSON or a class folder.",
    ),
    data_root: Path | None = typer.Option(
        None,
        "--data-root",
        help="Where the datasets are; default $CLIPCTL_DATA, else the checkpoint's data.root, else ./data.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics (fractions) as JSON on stdout."),
    max_missing: int | None = typer.Option(
        None,
        "--max-missing",
        min=0,
        help="Images a benchmark may miss (absent or unreadable) before eval refuses (exit 3); default: the "
        "checkpoint recipe's eval.max_missing (0).",
    ),
) -> None:
    """Evaluate a checkpoint on the test splits; writes eval/<benchmark>.json beside it.

    Beside a file other than a run's ckpt.pt (e.g. checkpoints/epoch_2.pt) the results go to eval/<file stem>/.

    TR@k is image→text retrieval (an image hits if any of its captions is in the top k), IR@k is
    text→image; ACC@k is zero-shot top-k accuracy; objective = (TR@1 + IR@1 + ACC@1) / 3.

    Example: clipctl eval runs/quickstart/ckpt.pt --shapes --dataset my/retrieval.json
    """
    from clipctl.evaluate.benchmarks import check_request, notes, shorthand_flags

    words, options = split_words([checkpoint, *ctx.args], valued=False)
    if len(words) != 1:
        raise UsageError(f"clipctl eval: give one checkpoint, got {len(words)}: {' '.join(words)}")
    chosen = [name for name, _ in options]
    _check_flags(chosen, list(shorthand_flags()))
    check_request(chosen, dataset)
    path = Path(words[0])
    _check_before_torch(path, chosen, dataset, data_root)
    from clipctl.evaluate.checkpoint_eval import evaluate_checkpoint  # torch: seconds of imports

    results = evaluate_checkpoint(
        path, chosen, datasets=dataset, root=data_root, progress=not as_json, max_missing=max_missing
    )
    if as_json:
        emit_json(results)
    else:
        _render(path, results, notes())


def _check_before_torch(path: Path, flags: list[str], refs: list[str], data_root: Path | None) -> None:
    """A missing checkpoint or dataset is reported before torch loads (seconds), every missing dataset at once.
    Without --data-root or $CLIPCTL_DATA the root is the checkpoint's data.root, read here from its run folder's
    recipe.toml; a checkpoint outside a run folder is checked once loaded."""
    from clipctl.evaluate.benchmarks import plan
    from clipctl.paths import chosen_data_root
    from clipctl.run.layout import RunDir

    if not path.is_file():
        what = "a folder, not a checkpoint file" if path.is_dir() else "no such clipctl checkpoint"
        raise UsageError(f"{path}: {what}; pass runs/<run>/ckpt.pt")
    recorded = _recorded_root(RunDir(path.parent).recipe)
    if data_root is None and not os.environ.get("CLIPCTL_DATA") and recorded is None:
        return
    plan(flags, refs, chosen_data_root(data_root, recorded or "")[0])


def _recorded_root(recipe: Path) -> str | None:
    """data.root of the recipe a run folder holds ("" when it leaves the default); None when unreadable."""
    from clipctl.recipe import tomllib

    try:
        raw = tomllib.loads(recipe.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    root = raw.get("data", {}).get("root", "") if isinstance(raw.get("data"), dict) else ""
    return root if isinstance(root, str) else None


def _render(path: Path, results: dict, said: dict[str, str]) -> None:
    """The table, then per row what was scored, the benchmark's note and the encoding speed."""
    rows = [(name, *(_cell(metrics, key) for key in COLUMNS), _scored(metrics)) for name, metrics in results.items()]
    print_table(
        f"{path} (percent; TR = image→text, IR = text→image)",
        ["benchmark", *(c.upper() for c in COLUMNS), "SCORED"],
        rows,
    )
    for name, metrics in results.items():
        if scored := _scored_line(metrics):
            info(f"{name}: scored {scored}")
        if name in said:
            info(f"{name}: {said[name]}")
        speeds = [
            f"{metrics[k]:.0f} {k.removesuffix('_per_s')}/s"
            for k in ("images_per_s", "captions_per_s")
            if metrics.get(k)
        ]
        if speeds:
            info(f"{name}: encoding " + ", ".join(speeds))


CONTEXT = EXTRA_ARGS
COMMAND_CLASS = table_help(_benchmarks_help)
