"""`clipctl export`."""

from __future__ import annotations

from pathlib import Path

import typer

from clipctl.console import emit_json, info


def export_command(
    source: Path = typer.Argument(..., help="A run directory, its ckpt.pt, or a folder `clipctl export` wrote."),
    out: Path = typer.Option(..., "--out", help="The folder to create (it must not exist)."),
    fmt: str = typer.Option(
        "open_clip",
        "--format",
        help="open_clip (for open_clip and clip_benchmark), safetensors (weights + clipctl.json + tokenizer), or hf "
        "(explains why no Hugging Face class holds a timm image tower).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON on stdout."),
) -> None:
    """Export a model for open_clip and clip_benchmark, or as plain safetensors; verified before it appears.

    The export is loaded back (through open_clip for --format open_clip) and compared with clipctl's model on a fixed batch; the folder appears only if tokens, preprocessing and features agree within 1e-5.

    Example: clipctl export runs/quickstart --format open_clip --out exports/quickstart
    """
    from clipctl.interop.export import export_model

    result = export_model(source, out, fmt)
    if as_json:
        emit_json(
            {
                "out": str(result.out),
                "format": result.format,
                "files": result.files,
                "temperature": result.temperature,
                "temperature_source": result.temperature_source,
                "shim": result.shim,
                "differences": result.differences,
            }
        )
        return
    worst = max(result.differences.values(), default=0.0)
    info(f"exported {source} to {result.out} ({result.format}: {', '.join(result.files)})")
    info(f"verified: features and preprocessing within {worst:.2g} of clipctl's on the check batch")
    info(f"temperature τ = {result.temperature:.4g} (logit_scale = ln(1/τ)); {result.temperature_source}")
    if result.format == "open_clip":
        shim = f"import {result.shim}; " if result.shim else ""
        info(f"load it: {shim}open_clip.create_model_and_transforms('local-dir:{result.out}')")
        if result.shim:
            info(f"its text tower needs `import {result.shim}` once before open_clip loads it (open_clip 3.3 lacks it)")
