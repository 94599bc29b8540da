"""`compare --plot`: one PNG with the test metrics per group (bars, ± std) and the validation curves.

Drawn with matplotlib's object API on the Agg canvas, so it works headless and leaves pyplot's global
state alone. Published rows are drawn (hatched) only when some group was tested on COCO 5k/ImageNet,
since beside shapes numbers they would only mislead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from clipctl.errors import UsageError
from clipctl.report import baselines as pub
from clipctl.report.compare import METRIC_TITLES, Comparison
from clipctl.report.text import plot_text


def plot_metrics(c: Comparison) -> list[str]:
    """The bar-chart metrics: the chosen ones, the average left out unless it is all that was chosen."""
    chosen = [m for m in c.metrics if m != "average"]
    return chosen or list(c.metrics)


def write_plot(c: Comparison, path: Path) -> Path:
    """Write the PNG atomically (temp file beside it, then rename); returns the path written."""
    if path.exists() and path.is_dir():
        raise UsageError(f"--plot {path}: is a directory; give a file name such as {path / 'compare.png'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(13, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    bars_ax, curve_ax = fig.subplots(1, 2, width_ratios=[1.2, 1])
    _bars(c, bars_ax)
    _curves(c, curve_ax)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png", dpi=110)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _bars(c: Comparison, ax: Axes) -> None:
    metrics = plot_metrics(c)
    rows: list[tuple[str, list[float], list[float], bool]] = []
    for g in c.groups:
        stats = [g.stat(m) for m in metrics]
        rows.append(
            (
                f"{plot_text(g.label)}\n(n={len(g.runs)})",
                [100 * (s.mean or 0.0) for s in stats],
                [100 * (s.std or 0.0) for s in stats],
                False,
            )
        )
    if any(pub.is_coco_5k(g.retrieval_source) or pub.is_imagenet(g.zeroshot_source) for g in c.groups):
        if rows:
            ax.axvline(len(rows) - 0.5, color="gray", linewidth=0.8, linestyle=":")
        for row in c.published:
            rows.append(
                (f"{row.key}\n(published)", [row.metric(m) or 0.0 for m in metrics], [0.0] * len(metrics), True)
            )
    if not rows:
        ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    width = 0.8 / len(metrics)
    for j, metric in enumerate(metrics):
        color = f"C{j}"
        for i, (_, means, stds, published) in enumerate(rows):
            ax.bar(
                i + (j - (len(metrics) - 1) / 2) * width,
                means[j],
                width,
                yerr=stds[j] or None,
                capsize=3,
                color=color,
                hatch="//" if published else None,
                alpha=0.55 if published else 1.0,
                edgecolor="black" if published else color,
                label=METRIC_TITLES[metric] if i == 0 else None,
            )
    labels = [label for label, *_ in rows]
    crowded = len(rows) * max(len(line) for label in labels for line in label.splitlines()) > 90
    # Long group names (clip_b32, isogclr_new_v2_b256, ...) overlap side by side: slant them instead.
    ax.set_xticks(
        range(len(rows)), labels, fontsize=8, rotation=30 if crowded else 0, ha="right" if crowded else "center"
    )
    ax.set_ylabel("test metric (%)")
    sources = sorted({f"{g.retrieval_source} / {g.zeroshot_source}" for g in c.groups})
    ax.set_title("test metrics, mean ± std over seeds\n" + plot_text("; ".join(sources)), fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _curves(c: Comparison, ax: Axes) -> None:
    colored = [(f"C{i % 10}", run) for i, g in enumerate(c.groups) for run in g.runs + g.others]
    grouped = {id(run) for _, run in colored}
    colored += [("gray", run) for run in c.excluded if id(run) not in grouped]
    drawn = 0
    for color, run in colored:
        points = [(p.epoch, 100 * p.values["val/objective"]) for p in run.evals() if "val/objective" in p.values]
        if not points:
            continue
        epochs, values = zip(*sorted(points))
        suffix = "" if run.counted else f" ({run.status})"
        ax.plot(
            epochs,
            values,
            marker="o",
            markersize=3,
            color=color,
            linestyle="-" if run.counted else "--",
            label=plot_text(f"{os.path.basename(run.label)}{suffix}"),
        )
        drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no eval lines in metrics.jsonl", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (numbered from 0, as in metrics.jsonl)")
    ax.set_ylabel("validation objective (%)")
    ax.set_title("validation objective per epoch (dashed: not counted)", fontsize=9)
    ax.legend(fontsize=7, ncol=2 if drawn > 8 else 1)
    ax.grid(alpha=0.3)
