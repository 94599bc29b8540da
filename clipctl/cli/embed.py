"""`clipctl embed`."""

from __future__ import annotations

from pathlib import Path

import typer

from clipctl.console import emit_json, info


def embed_command(
    source: Path = typer.Argument(..., help="A run directory, its ckpt.pt, or an exported folder."),
    out: Path = typer.Option(..., "--out", help="The .npy file to write; its index goes beside it as .csv."),
    images: str | None = typer.Option(
        None, "--images", help="A folder (searched recursively), an image file, or a quoted glob such as 'a/**/*.jpg'."
    ),
    texts: Path | None = typer.Option(
        None, "--texts", help="A UTF-8 text file: one text per line, embedded as written."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Default: the run's eval.batch_size."),
    workers: int | None = typer.Option(
        None, "--workers", min=0, help="Image loading processes; default: the run's data.num_workers."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON on stdout."),
) -> None:
    """Embed images or texts as clipctl eval encodes them: a .npy matrix and an index CSV.

    One L2-normalised row per input; the CSV holds row, path (images) or row, line, text (texts).

    Large jobs are resumable: interrupted, the same command continues after the last 4096-row part written.

    Example: clipctl embed runs/quickstart --images photos/ --out photos.npy
    """
    from clipctl.interop.embed import embed

    result = embed(
        source, out, images=images, texts=texts, batch_size=batch_size, num_workers=workers, progress=not as_json
    )
    if as_json:
        emit_json(
            {
                "out": str(result.out),
                "index": str(result.index),
                "rows": result.rows,
                "dim": result.dim,
                "resumed_rows": result.resumed,
                "items_per_s": result.items_per_s,
            }
        )
        return
    resumed = f", {result.resumed} of them from the interrupted run" if result.resumed else ""
    info(f"wrote {result.rows} x {result.dim} features to {result.out} and the index {result.index}{resumed}")
    info(f"encoding {result.items_per_s:.0f} {'images' if images is not None else 'texts'}/s")
