"""`clipctl zeroshot`."""

from __future__ import annotations

from pathlib import Path

import typer

from clipctl.console import emit_json, print_table


def zeroshot_command(
    source: Path = typer.Argument(..., help="A run directory, its ckpt.pt, or an exported folder."),
    images: str = typer.Option(
        ..., "--images", help="A folder (searched recursively), an image file, or a quoted glob such as 'a/**/*.jpg'."
    ),
    classes: str = typer.Option(..., "--classes", help='Class names: "cat,dog,bird", or a file with one per line.'),
    templates: Path | None = typer.Option(
        None,
        "--templates",
        help='A file of prompts, one per line, {} for the class name (default: "a photo of a {}.").',
    ),
    top: int = typer.Option(5, "--top", min=1, help="How many classes to show per image."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Default: the run's eval.batch_size."),
    as_json: bool = typer.Option(False, "--json", help="Print the predictions as JSON on stdout."),
) -> None:
    """Classify your own images by class names, as clipctl eval scores zero-shot.

    Each class is the mean embedding of its prompts; images are ranked against them by exact cosine similarity (a tie goes to the class listed first); probabilities are softmax(cosine / τ) at the model's temperature.

    Example: clipctl zeroshot runs/quickstart --images photos/ --classes "red circle,blue star" --top 2
    """
    from clipctl.interop.predict import zeroshot

    predictions = zeroshot(source, images, classes, templates, top=top, batch_size=batch_size, progress=not as_json)
    if as_json:
        emit_json(
            [
                {
                    "image": p.image,
                    "top": [{"class": g.label, "probability": g.probability, "cosine": g.cosine} for g in p.top],
                }
                for p in predictions
            ]
        )
        return
    rows = [(p.image, ", ".join(f"{g.label} {100 * g.probability:.1f}%" for g in p.top)) for p in predictions]
    print_table(f"{source}: top {top} classes per image (probability)", ["image", "classes"], rows)
