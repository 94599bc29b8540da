"""One table of every benchmark's targets, read from bench/results/ (run by `make bench` after the benchmarks).

    python bench/_summary.py [--results DIR]

A benchmark script without a result file, or with one from before targets were recorded, shows as 'not run'.
GPU results with targets (bench/results/gpu/, from bench/gpu_check.sh) are included when present.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _common import RESULTS, ROOT

from clipctl.console import console, table


def benchmark_names() -> list[str]:
    return sorted(p.stem for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "fraction":
        return f"{100 * value:.1f}%"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:g} {unit}"


def summary_rows(results: Path) -> list[list[Any]]:
    """[benchmark, measure, value, target, status, measured at] for every check, in benchmark order."""
    payloads = {p.stem: json.loads(p.read_text()) for p in results.glob("*.json")}
    # gpu_check.sh also leaves run summaries there; only files with targets belong in this table
    gpu = {f"gpu/{p.stem}": json.loads(p.read_text()) for p in sorted((results / "gpu").glob("*.json"))}
    payloads.update({name: payload for name, payload in gpu.items() if payload.get("checks")})
    rows = []
    for name in benchmark_names() + sorted(n for n in payloads if n.startswith("gpu/")):
        payload = payloads.get(name, {})
        checks = payload.get("checks")
        if not checks:
            rows.append([name, "(no results with targets; run the benchmark)", "-", "-", "not run", "-"])
            continue
        for item in checks:
            target = f"{item['op']} {format_value(item['target'], item['unit'])}"
            rows.append(
                [
                    name,
                    item["measure"],
                    format_value(item["value"], item["unit"]),
                    target,
                    item["status"],
                    payload.get("measured_at", "-"),
                ]
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = summary_rows(args.results)
    # Wide enough for one line per check even off a terminal (make bench piped to a log).
    out = console()
    out.width = max(out.width, 110)
    out.print(
        table(
            f"benchmark targets ({args.results})",
            ["benchmark", "measure", "value", "target", "status"],
            [row[:5] for row in rows],
        )
    )
    times = sorted(row[5] for row in rows if row[5] != "-")
    if times:
        print(f"measured {times[0]} to {times[-1]}")
    statuses = [row[4] for row in rows]
    print(f"{statuses.count('met')} met, {statuses.count('missed')} missed, {statuses.count('not run')} not run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
