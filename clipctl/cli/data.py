"""`clipctl data ls|fetch|verify`. A dataset's own options (`--seed`, `--prepare-size`, ...) come from its record's
options model, so `fetch` reads them from the words Typer leaves unparsed (`clipctl.cli.records`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from clipctl.cli.records import EXTRA_ARGS, split_words, table_help
from clipctl.console import emit_json, info, print_table, warn
from clipctl.errors import UsageError
from clipctl.paths import chosen_data_root

app = typer.Typer(
    help="Datasets: list, fetch (or generate) and verify.\n\nExample: clipctl data fetch shapes", no_args_is_help=True
)
DATA_ROOT_HELP = "The data root to use; default $CLIPCTL_DATA, else ./data (e.g. a recipe's data.root)."


def _root(given: Path | None) -> Path:
    return chosen_data_root(given)[0]


def _size(value: int | None) -> str:
    if not value:
        return "-"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


@app.command("ls")
def ls(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable list on stdout."),
    data_root: Path | None = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
) -> None:
    """The dataset registry with what is present under the data root.  Example: clipctl data ls"""
    from clipctl.data.operations import dataset_status

    root = _root(data_root)
    rows = dataset_status(root)
    if as_json:
        emit_json({"data_root": str(root.resolve()), "datasets": rows})
        return
    print_table(
        f"datasets under {root.resolve()}",
        ["id", "role", "present", "size", "verified", "description"],
        [
            (
                r["id"],
                r["role"],
                "yes" if r["present"] else "no",
                _size(r["size_bytes"]),
                _verified(r),
                r["description"],
            )
            for r in rows
        ],
    )


def _verified(row: dict) -> str:
    """The date of the last verification (real datasets), yes/no (shapes), '-' when absent."""
    if not row["present"]:
        return "-"
    if isinstance(row["verified"], str):
        return row["verified"][:10]
    return "yes" if row["verified"] else "no"


def _options_help() -> str:
    from clipctl.data.registry import records

    def described(name: str, field: Any) -> str:
        return f"--{name.replace('_', '-')} ({'required' if field.is_required() else f'default {field.default}'})"

    lines = [
        f"{spec.id}: " + ", ".join(described(name, field) for name, field in fields.items())
        for spec in records()
        if (fields := spec.options.model_fields)
    ]
    return "Dataset options (--NAME VALUE, from each dataset's record):\n\n" + "\n\n".join(lines)


@app.command("fetch", context_settings=EXTRA_ARGS, cls=table_help(_options_help))
def fetch(
    ctx: typer.Context,
    dataset_id: str = typer.Argument(
        ..., metavar="ID [--OPTION VALUE ...]", help="Dataset id (see `clipctl data ls`)."
    ),
    force: bool = typer.Option(False, "--force", help="Re-make it even if it is present and verifies."),
    data_root: Path | None = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
) -> None:
    """Download and verify a dataset, or generate `shapes`; a present dataset is only verified, unless you name
    other options (the ones you do not name keep the present copy's values).

    Example: clipctl data fetch shapes --train-size 5000
    """
    from clipctl.data.operations import fetch_dataset

    words, options = split_words([dataset_id, *ctx.args], valued=True)
    if len(words) != 1:
        raise UsageError(f"clipctl data fetch: give one dataset id, got {len(words)}: {' '.join(words)}")
    dataset_id, root = words[0], _root(data_root)
    values = {name.replace("-", "_"): value for name, value in options}
    action, manifest = fetch_dataset(dataset_id, root, options=values, force=force)
    counts = ", ".join(f"{k} {v}" for k, v in manifest.get("counts", {}).items())
    _note_unverified(dataset_id, manifest)
    if action == "verified":
        info(f"{dataset_id}: already present and verified under {root} ({counts}); nothing to do (--force re-makes it)")
    else:
        info(f"{dataset_id}: {action} and verified ({counts}); manifest {root / 'manifests' / (dataset_id + '.json')}")


@app.command("verify")
def verify(
    dataset_id: str = typer.Argument(..., metavar="ID", help="Dataset id (see `clipctl data ls`)."),
    data_root: Path | None = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
) -> None:
    """Re-check a present dataset against its manifest (hashes, counts); exit 3 on any difference.

    Example: clipctl data verify coco-karpathy-test
    """
    from clipctl.data.operations import verify_dataset

    manifest = verify_dataset(dataset_id, _root(data_root))
    counts = ", ".join(f"{k} {v}" for k, v in manifest.get("counts", {}).items())
    info(f"{dataset_id}: verified ({counts})")
    _note_unverified(dataset_id, manifest)


def _note_unverified(dataset_id: str, manifest: dict) -> None:
    from clipctl.data.operations import unverified_note

    note = unverified_note(dataset_id, manifest)
    if note:
        warn(note)


@app.command("index")
def index(
    source: str = typer.Argument(..., metavar="SOURCE", help="WebDataset shards: folder, pattern, URL, or a::b list."),
    workers: int = typer.Option(8, "--workers", min=1, max=256, help="Shards read at once."),
    data_root: Path | None = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
) -> None:
    """Count the samples of every shard once and write the index training numbers them by (resumable: shards already
    counted are kept). Written beside local shards, else under the data root.

    Example: clipctl data index 'shards/{00000..00999}.tar'
    """
    from clipctl.data.shardindex import build_index
    from clipctl.data.shards import expand_source

    shards = expand_source(source)
    path, table = build_index(shards, _root(data_root), workers=workers)
    info(f"{source}: {table.total} samples in {len(shards.urls)} shards; index {path} (digest {table.digest[:12]})")
