"""The loss diagnostics of a study's final runs, per group: what the temperatures and the moving estimates did.

A study's scores say which loss won; these say why it could: whether the temperatures moved apart or only fell
(τ mean and spread at the end, the share at τ's bounds, the share of positive τ-gradients) and how stale each
sample's moving estimate was when it was revisited (median |ℓ − log ĝ| before the update, per logged step).
Values are means over a group's seeds; staleness is given at the end and averaged over the run's logged steps.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from clipctl.errors import UsageError
from clipctl.report.study.files import cell, write_table
from clipctl.report.text import printable
from clipctl.run.layout import RunDir
from clipctl.run.reader import completed_summary, finite_number, read_metrics

# the last train record's diagnostics, also kept per grid run in a study's grid.json
DIAGNOSTICS = (
    "loss",
    "tau_I_mean",
    "tau_I_std",
    "tau_I_at_min",
    "tau_I_at_max",
    "tau_grad_I_pos",
    "stale_I",
    "stale_T",
)
STALENESS = ("stale_I", "stale_T")
COLUMNS = (
    ("tau_I_mean", "τ_I mean", "{:.4f}"),
    ("tau_I_std", "τ_I std", "{:.1e}"),
    ("tau_I_at_min", "at τ_min", "{:.0%}"),
    ("tau_I_at_max", "at τ_max", "{:.0%}"),
    ("tau_grad_I_pos", "τ-grad > 0", "{:.0%}"),
    ("stale_I", "stale I (end)", "{:.2f}"),
    ("stale_I_run", "stale I (run)", "{:.2f}"),
    ("stale_T", "stale T (end)", "{:.2f}"),
    ("stale_T_run", "stale T (run)", "{:.2f}"),
)


def train_records(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics(RunDir(run_dir)) if r.get("type") == "train"]


def last_diagnostics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The diagnostics of the last logged training step (those its loss logs)."""
    return {k: records[-1][k] for k in DIAGNOSTICS if records and k in records[-1]}


def last_train_record(run_dir: Path) -> dict[str, Any]:
    return last_diagnostics(train_records(run_dir))


def finite_mean(values: list[Any]) -> float | None:
    kept = [v for v in map(finite_number, values) if v is not None]
    return statistics.fmean(kept) if kept else None


def run_diagnostics(run_dir: Path) -> dict[str, Any]:
    """The last step's diagnostics, plus each staleness averaged over the run's logged steps (`stale_I_run`)."""
    records = train_records(run_dir)
    row = last_diagnostics(records)
    for key in STALENESS:
        row[f"{key}_run"] = finite_mean([r.get(key) for r in records])
    return row


def group_of(run_dir: Path) -> str:
    return run_dir.name.rsplit("-seed", 1)[0]


def study_diagnostics(out: Path) -> list[dict[str, Any]]:
    """Per group of completed runs under `out` (named `<group>-seed<N>`): seeds and the mean of each value."""
    if not out.is_dir():
        raise UsageError(f"{printable(str(out))}: not a folder of runs; pass the study's folder of final runs")
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        if completed_summary(RunDir(run_dir)) is not None:
            runs[group_of(run_dir)].append(run_diagnostics(run_dir))
    rows = []
    for group, per_run in sorted(runs.items()):
        keys = sorted({k for row in per_run for k in row})
        rows.append({"group": group, "n": len(per_run), **{k: finite_mean([r.get(k) for r in per_run]) for k in keys}})
    return rows


def markdown(rows: list[dict[str, Any]], out: Path) -> str:
    lines = [
        f"### Loss diagnostics of the final runs ({cell(str(out))})",
        "",
        "| group | n | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "—" for key, _, fmt in COLUMNS]
        lines.append(f"| {cell(row['group'])} | {row['n']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "- means over the group's seeds; τ columns at the last logged step (image side; — for a loss without "
        "individual temperatures); τ-grad > 0: share of the step's τ-gradients that were positive (τ can only "
        "fall when it is 100%); stale: median |ℓ − log ĝ| of the revisited samples before their update, "
        "at the last logged step and averaged over the run's logged steps (— for a loss without moving "
        "estimates)",
    ]
    return "\n".join(lines) + "\n"


def write_diagnostics(out: Path, results: Path) -> Path:
    """diagnostics.{md,json} in `results` for the final runs in `out`; returns the markdown's path."""
    rows = study_diagnostics(out)
    return write_table(results, "diagnostics", {"runs": str(out), "groups": rows}, markdown(rows, out))
