"""Paired per-seed differences between the groups of a study, read from its `clipctl compare --json` output.

A seed fixes the initial weights and the data order for every recipe of a study, so the difference of two groups
seed by seed is the comparison to read, not the difference of their means over a spread of seeds. Every two
groups whose recipe names (`names.factors`) differ in exactly one factor are paired on the seeds both have
(at least two); per metric, the differences in points (second minus first, names in natural order: b8 before
b32), their mean with a 95% interval, and the sign count with its sign-test p (`stats.PairedStats`).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from clipctl.report.study.files import cell, read_groups, write_table
from clipctl.report.study.names import differing_factor, natural_key, recipe_of
from clipctl.report.study.stats import PairedStats

METRICS = ("average", "tr@1", "ir@1", "acc@1")


def per_seed(group: dict[str, Any], metric: str) -> dict[int, float] | None:
    """seed -> value of `metric`; None when the group's values cannot be matched to its seeds one to one (the
    metric was not compared, or a run lacks it: compare.json keeps only the values present)."""
    seeds = group.get("seeds") or []
    values = (group.get("metrics", {}).get(metric) or {}).get("values")
    if values is None or len(values) != len(seeds) or len(set(seeds)) != len(seeds):
        return None
    return dict(zip(seeds, values))


def pair(first: dict[str, Any], second: dict[str, Any], factor: str) -> dict[str, Any] | None:
    """Differences on the seeds both groups have (None when they share fewer than two); a metric one of them
    cannot give per seed is None."""
    seeds = sorted(set(first["seeds"]) & set(second["seeds"]) - {None})
    if len(seeds) < 2:
        return None
    row: dict[str, Any] = {"first": first["label"], "second": second["label"], "factor": factor, "seeds": seeds}
    for metric in METRICS:
        a, b = per_seed(first, metric), per_seed(second, metric)
        row[metric] = None if a is None or b is None else PairedStats([100 * (b[s] - a[s]) for s in seeds]).to_json()
    return row


def paired_rows(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    measured = [g for g in groups if g.get("kind") == "measured" and isinstance(g.get("seeds"), list)]
    measured.sort(key=lambda g: natural_key(recipe_of(g["label"])))
    rows = []
    for first, second in itertools.combinations(measured, 2):
        factor = differing_factor(first["label"], second["label"])
        if factor is not None and (row := pair(first, second, factor)):
            rows.append(row)
    return rows


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def _p_value(p: float) -> str:
    return f"{p:.2g}" if p < 1 else "1"


def average_cells(average: dict[str, Any] | None, n: int) -> list[str]:
    """The average's cells: per seed, mean ± std, sign count, 95% interval, sign-test p, called."""
    if average is None:
        return ["—"] * 6
    std = "—" if average["std"] is None else f"{average['std']:.2f}"
    interval = "—" if average["ci95"] is None else "[" + ", ".join(map(_signed, average["ci95"])) + "]"
    return [
        ", ".join(map(_signed, average["deltas"])),
        f"{_signed(average['mean'])} ± {std}",
        f"{average['second_higher']}/{n}",
        interval,
        _p_value(average["sign_test_p"]),
        "yes" if average["called"] else "no",
    ]


def markdown(rows: list[dict[str, Any]], source: Path) -> str:
    lines = [
        f"### Paired per-seed differences ({cell(str(source))})",
        "",
        "| first | second | factor | seeds | Δaverage per seed | mean ± std | second higher | 95% interval "
        "| sign-test p | called | ΔTR@1 | ΔIR@1 | ΔACC@1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        others = [_signed(row[m]["mean"]) if row[m] else "—" for m in METRICS[1:]]
        cells = [cell(row["first"]), cell(row["second"]), row["factor"], ", ".join(map(str, row["seeds"]))]
        cells += average_cells(row["average"], len(row["seeds"])) + others
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "- Δ = second − first, test metrics in points (percent of items); the two groups differ in one factor "
        "(towers, loss or batch); average = (TR@1 + IR@1 + ACC@1) / 3; ΔTR@1, ΔIR@1, ΔACC@1 are means over the seeds",
        "- 95% interval: paired t, mean ± t(0.975, n − 1) · std / √n; sign-test p: exact two-sided binomial test of "
        "the seeds on which the second was higher (ties left out); called: the interval excludes 0. Intervals and "
        "sign tests of ΔTR@1, ΔIR@1 and ΔACC@1 are in paired.json",
    ]
    return "\n".join(lines) + "\n"


def write_paired(compare_json: Path, folder: Path | None = None) -> Path:
    """paired.{md,json} in `folder` (default: beside `compare_json`); returns the markdown's path."""
    rows = paired_rows(read_groups(compare_json))
    payload = {"source": str(compare_json), "pairs": rows}
    return write_table(folder or compare_json.parent, "paired", payload, markdown(rows, compare_json))
