"""`clipctl eval`."""

from __future__ import annotations

from pathlib import Path

import typer

from clipctl.console import emit_json, info, print_table

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


def eval_command(
    checkpoint: Path = typer.Argument(..., help="A clipctl checkpoint, e.g. runs/quickstart/ckpt.pt."),
    coco: bool = typer.Option(False, "--coco", help="MSCOCO 5k Karpathy test retrieval (coco-karpathy-test)."),
    imagenet: bool = typer.Option(
        False,
        "--imagenet",
        help="ImageNet-1k zero-shot on imagenet-val:test (the 40k that "
        "selection never sees), 1,000 OpenAI names, 80 templates.",
    ),
    imagenet_full: bool = typer.Option(
        False,
        "--imagenet-full",
        help="ImageNet-1k zero-shot on all 50k val images, "
        "as the published figures were measured (includes the selection fifth).",
    ),
    shapes: bool = typer.Option(False, "--shapes", help="shapes test retrieval + zero-shot."),
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

    TR@k is image→text retrieval (an image hits if any of its captions is in the top k), IR@k is
    text→image; ACC@k is zero-shot top-k accuracy; objective = (TR@1 + IR@1 + ACC@1) / 3.

    Example: clipctl eval runs/quickstart/ckpt.pt --shapes
    """
    from clipctl.evaluate.checkpoint_eval import NOTES, evaluate_checkpoint

    flags = (("coco", coco), ("imagenet", imagenet), ("imagenet-full", imagenet_full), ("shapes", shapes))
    chosen = [name for name, flag in flags if flag]
    results = evaluate_checkpoint(checkpoint, chosen, progress=not as_json, max_missing=max_missing)
    if as_json:
        emit_json(results)
        return
    rows = [(name, *(_cell(metrics, key) for key in COLUMNS), _scored(metrics)) for name, metrics in results.items()]
    print_table(
        f"{checkpoint} (percent; TR = image→text, IR = text→image)",
        ["benchmark", *(c.upper() for c in COLUMNS), "SCORED"],
        rows,
    )
    for name, metrics in results.items():
        if scored := _scored_line(metrics):
            info(f"{name}: scored {scored}")
        if name in NOTES:
            info(f"{name}: {NOTES[name]}")
        speeds = [
            f"{metrics[k]:.0f} {k.removesuffix('_per_s')}/s"
            for k in ("images_per_s", "captions_per_s")
            if metrics.get(k)
        ]
        if speeds:
            info(f"{name}: encoding " + ", ".join(speeds))
