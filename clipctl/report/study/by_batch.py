"""The test average of every study cell against its global batch, one line per recipe family (`names.family`).

The comparison's own plot shows every run; this one shows the study's question: how each loss's score moves
with the batch. Drawn with matplotlib's object API on the Agg canvas (headless, pyplot's global state left alone).
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from clipctl.atomic import atomic_write_bytes
from clipctl.errors import UsageError
from clipctl.report.study.files import read_groups
from clipctl.report.study.names import factors, family
from clipctl.report.text import plot_text, printable

Lines = dict[str, list[tuple[int, float, float]]]


def families(groups: list[dict[str, Any]]) -> Lines:
    """family -> [(batch, mean, std)] of the test average in points, batches ascending; groups without a batch
    in their name, or without an average, are left out."""
    lines: Lines = defaultdict(list)
    for group in groups:
        batch = factors(group["label"])["batch"]
        average = (group.get("metrics") or {}).get("average") or {}
        if group.get("kind") == "measured" and batch and average.get("mean") is not None:
            point = (int(batch[1:]), 100 * average["mean"], 100 * (average.get("std") or 0.0))
            lines[family(group["label"])].append(point)
    return {name: sorted(points) for name, points in sorted(lines.items())}


def draw(lines: Lines) -> bytes:
    """The PNG: mean ± std per family against the batch on a log-2 axis."""
    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for name, points in lines.items():
        batches, means, stds = zip(*points, strict=True)
        axes.errorbar(batches, means, yerr=stds, marker="o", capsize=3, label=plot_text(name))
    axes.set_xscale("log", base=2)
    batches = sorted({b for points in lines.values() for b, _, _ in points})
    axes.set_xticks(batches, [str(b) for b in batches])
    axes.set_xlabel("global batch")
    axes.set_ylabel("test average of TR@1, IR@1, ACC@1 (%)")
    axes.set_title("mean ± std over seeds, per recipe family", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def plot_by_batch(compare_json: Path, folder: Path | None = None) -> Path:
    """by_batch.png in `folder` (default: beside `compare_json`); returns its path."""
    lines = families(read_groups(compare_json))
    if not lines:
        raise UsageError(
            f"{printable(str(compare_json))}: no measured group named <loss>_b<batch> with a test average; "
            "nothing to plot against the batch"
        )
    out = (folder or compare_json.parent) / "by_batch.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, draw(lines))
    return out
