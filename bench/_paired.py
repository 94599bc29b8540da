"""Paired per-seed differences between the groups of a study, read from its `clipctl compare --json` output.

    python bench/_paired.py bench/results/study2/b/compare.json

A seed fixes the initial weights and the data order for every recipe of a study, so the difference of two groups
seed by seed is the comparison to read, not the difference of their means over a spread of seeds. A study's
recipe names are read as factors: `[<source>towers_]<loss and its settings>_b<global batch>`
(`cliptowers_clip_b8`, `sogclr_g08_b16`, `isogclr_new_v2_b32`), and every two groups that differ in exactly one
factor are paired (a grid value chosen per cell, `-lr-0.002` in a group's name, is not a factor);
`paired.{md,json}` beside the input list, per pair, the factor, the per-seed differences of each metric in
points (second minus first, names in natural order: b8 before b32), their mean, and on how many seeds the
second was higher.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
from pathlib import Path
from typing import Any

from _common import info, write_table

METRICS = ("average", "tr@1", "ir@1", "acc@1")


def natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def recipe_of(label: str) -> str:
    """A study group's recipe: its label without the grid value (`cliptowers_clip_b8-lr-0.002`: the lr was
    chosen per cell, so it is not a factor of the comparison)."""
    return label.split("-")[0]


def factors(label: str) -> dict[str, str]:
    """A study recipe's factors: the tower source (a first part ending in `towers`), the global batch (a last
    part `b<N>`) and the loss with its settings (the parts between); a factor a name lacks is ""."""
    parts = recipe_of(label).split("_")
    batch = parts.pop() if len(parts) > 1 and re.fullmatch(r"b\d+", parts[-1]) else ""
    towers = parts.pop(0) if len(parts) > 1 and parts[0].endswith("towers") else ""
    return {"towers": towers, "loss": "_".join(parts), "batch": batch}


def differing_factor(first: str, second: str) -> str | None:
    """The one factor in which two recipes differ, else None."""
    a, b = factors(first), factors(second)
    differ = [name for name in a if a[name] != b[name]]
    return differ[0] if len(differ) == 1 else None


def per_seed(group: dict[str, Any], metric: str) -> dict[int, float]:
    return dict(zip(group["seeds"], group["metrics"][metric]["values"], strict=True))


def pair(first: dict[str, Any], second: dict[str, Any], factor: str) -> dict[str, Any] | None:
    """Differences on the seeds both groups have (None when they share fewer than two)."""
    seeds = sorted(set(first["seeds"]) & set(second["seeds"]) - {None})
    if len(seeds) < 2:
        return None
    row: dict[str, Any] = {"first": first["label"], "second": second["label"], "factor": factor, "seeds": seeds}
    for metric in METRICS:
        a, b = per_seed(first, metric), per_seed(second, metric)
        deltas = [100 * (b[s] - a[s]) for s in seeds]
        row[metric] = {
            "deltas": deltas,
            "mean": statistics.fmean(deltas),
            "std": statistics.stdev(deltas),
            "second_higher": sum(d > 0 for d in deltas),
        }
    return row


def paired_rows(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    measured = sorted((g for g in groups if g["kind"] == "measured"), key=lambda g: natural_key(recipe_of(g["label"])))
    rows = []
    for first, second in itertools.combinations(measured, 2):
        factor = differing_factor(first["label"], second["label"])
        if factor is not None and (row := pair(first, second, factor)):
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], source: Path) -> str:
    lines = [
        f"### Paired per-seed differences ({source})",
        "",
        "| first | second | factor | seeds | Δaverage per seed | mean ± std | second higher | ΔTR@1 | ΔIR@1 | ΔACC@1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        avg = row["average"]
        others = " | ".join(f"{row[m]['mean']:+.2f}" for m in METRICS[1:])
        lines.append(
            f"| {row['first']} | {row['second']} | {row['factor']} | {', '.join(map(str, row['seeds']))} | "
            f"{', '.join(f'{d:+.2f}' for d in avg['deltas'])} | {avg['mean']:+.2f} ± {avg['std']:.2f} | "
            f"{avg['second_higher']}/{len(row['seeds'])} | {others} |"
        )
    lines += [
        "",
        "- Δ = second − first, test metrics in points (percent of items); the two groups differ in one factor "
        "(towers, loss or batch); average = (TR@1 + IR@1 + ACC@1) / 3; ΔTR@1, ΔIR@1, ΔACC@1 are means over the seeds",
    ]
    return "\n".join(lines) + "\n"


def write_paired(compare_json: Path) -> Path:
    """paired.{md,json} beside `compare_json`; returns the markdown's path."""
    rows = paired_rows(json.loads(compare_json.read_text())["groups"])
    return write_table(
        compare_json.parent, "paired", {"source": str(compare_json), "pairs": rows}, markdown(rows, compare_json)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compare_json", type=Path, help="`clipctl compare RUNS --json` output of the study")
    info(f"paired: {write_paired(parser.parse_args().compare_json)}")


if __name__ == "__main__":
    main()
