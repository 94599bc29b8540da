"""The test average of every study cell against its global batch, one line per recipe family, from a study's
`clipctl compare --json` output (recipes named `[<source>towers_]<loss>_b<batch>`, read by
`_paired.factors`: the towers and the loss make the family).

    python bench/_by_batch.py bench/results/study2/b/compare.json   # writes by_batch.png beside it

The comparison's own plot shows every run; this one shows the study's question: how each loss's score moves
with the batch.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from _common import info  # noqa: E402
from _paired import factors  # noqa: E402


def families(groups: list[dict[str, Any]]) -> dict[str, list[tuple[int, float, float]]]:
    """family -> [(batch, mean, std)] of the test average in points, batches ascending."""
    lines: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for group in groups:
        cell = factors(group["label"])
        if group["kind"] == "measured" and cell["batch"]:
            family = "_".join(part for part in (cell["towers"], cell["loss"]) if part)
            average = group["metrics"]["average"]
            lines[family].append((int(cell["batch"][1:]), 100 * average["mean"], 100 * (average["std"] or 0.0)))
    return {family: sorted(points) for family, points in sorted(lines.items())}


def plot_by_batch(compare_json: Path) -> Path:
    """by_batch.png beside `compare_json`; returns its path."""
    lines = families(json.loads(compare_json.read_text())["groups"])
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for family, points in lines.items():
        batches, means, stds = zip(*points, strict=True)
        axes.errorbar(batches, means, yerr=stds, marker="o", capsize=3, label=family)
    axes.set_xscale("log", base=2)
    batches = sorted({b for points in lines.values() for b, _, _ in points})
    axes.set_xticks(batches, [str(b) for b in batches])
    axes.set_xlabel("global batch")
    axes.set_ylabel("test average of TR@1, IR@1, ACC@1 (%)")
    axes.set_title("mean ± std over seeds, per recipe family", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    out = compare_json.parent / "by_batch.png"
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compare_json", type=Path, help="`clipctl compare RUNS --json` output of the study")
    info(f"by batch: {plot_by_batch(parser.parse_args().compare_json)}")


if __name__ == "__main__":
    main()
