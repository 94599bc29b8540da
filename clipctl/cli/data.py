"""`clipctl data ls|fetch|verify`."""

from __future__ import annotations

import typer

from clipctl.console import emit_json, info, print_table, warn
from clipctl.errors import UsageError
from clipctl.paths import data_root

app = typer.Typer(
    help="Datasets: list, fetch (or generate) and verify.\n\nExample: clipctl data fetch shapes", no_args_is_help=True
)


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
def ls(as_json: bool = typer.Option(False, "--json", help="Machine-readable list on stdout.")) -> None:
    """The dataset registry with what is present under the data root.  Example: clipctl data ls"""
    from clipctl.data.fetch import dataset_status

    root = data_root()
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


@app.command("fetch")
def fetch(
    dataset_id: str = typer.Argument(..., metavar="ID", help="Dataset id (see `clipctl data ls`)."),
    force: bool = typer.Option(False, "--force", help="Re-make it even if it is present and verifies."),
    train_size: int | None = typer.Option(None, "--train-size", help="shapes only: training pairs (default 20000)."),
    image_size: int | None = typer.Option(None, "--image-size", help="shapes only: image side in pixels (default 64)."),
    seed: int | None = typer.Option(None, "--seed", help="shapes only: generation seed (default 0)."),
    prepare_size: int | None = typer.Option(
        None,
        "--prepare-size",
        min=16,
        max=4096,
        help="cc3m-100k only: shorter image side after preparation (default 256).",
    ),
) -> None:
    """Download and verify a dataset, or generate `shapes`; a present dataset is only verified.

    Example: clipctl data fetch shapes --train-size 5000
    """
    from clipctl.data.fetch import fetch_dataset

    options = {"--train-size": train_size, "--image-size": image_size, "--seed": seed}
    given = [k for k, v in options.items() if v is not None]
    if given and dataset_id != "shapes":
        raise UsageError(f"{', '.join(given)}: only for `clipctl data fetch shapes`, not {dataset_id}")
    if prepare_size is not None and dataset_id != "cc3m-100k":
        raise UsageError(f"--prepare-size: only for `clipctl data fetch cc3m-100k`, not {dataset_id}")
    root = data_root()
    action, manifest = fetch_dataset(
        dataset_id,
        root,
        force=force,
        seed=0 if seed is None else seed,
        train_size=20_000 if train_size is None else train_size,
        image_size=64 if image_size is None else image_size,
        prepare_size=prepare_size,
    )
    counts = ", ".join(f"{k} {v}" for k, v in manifest.get("counts", {}).items())
    _note_unverified(dataset_id, manifest)
    if action == "verified":
        info(f"{dataset_id}: already present and verified under {root} ({counts}); nothing to do (--force re-makes it)")
    else:
        info(f"{dataset_id}: {action} and verified ({counts}); manifest {root / 'manifests' / (dataset_id + '.json')}")


@app.command("verify")
def verify(dataset_id: str = typer.Argument(..., metavar="ID", help="Dataset id (see `clipctl data ls`).")) -> None:
    """Re-check a present dataset against its manifest (hashes, counts); exit 3 on any difference.

    Example: clipctl data verify coco-karpathy-test
    """
    from clipctl.data.fetch import verify_dataset

    manifest = verify_dataset(dataset_id, data_root())
    counts = ", ".join(f"{k} {v}" for k, v in manifest.get("counts", {}).items())
    info(f"{dataset_id}: verified ({counts})")
    _note_unverified(dataset_id, manifest)


def _note_unverified(dataset_id: str, manifest: dict) -> None:
    from clipctl.data.fetch import unverified_note

    note = unverified_note(dataset_id, manifest)
    if note:
        warn(note)
