"""Everything a study writes about its final runs into its results folder: the comparison as `clipctl compare`
writes it (compare.md, compare.json, compare.png), the paired differences, the average against the batch and
the loss diagnostics."""

from __future__ import annotations

import json
from pathlib import Path

from clipctl.atomic import atomic_write_text
from clipctl.console import info
from clipctl.report.compare import build_comparison
from clipctl.report.plots import write_plot
from clipctl.report.render import summary_line, to_json, to_markdown
from clipctl.report.runs import scan_runs
from clipctl.report.study.by_batch import families, plot_by_batch
from clipctl.report.study.diagnostics import write_diagnostics
from clipctl.report.study.files import read_groups
from clipctl.report.study.paired import write_paired


def write_comparison(out: Path, results: Path) -> list[Path]:
    """compare.{md,json,png} of the runs under `out`, the same bytes `clipctl compare OUT --markdown|--json`
    prints; returns their paths, compare.json's first."""
    comparison = build_comparison(scan_runs([out]), None, None)
    results.mkdir(parents=True, exist_ok=True)
    write_plot(comparison, results / "compare.png")
    atomic_write_text(results / "compare.md", to_markdown(comparison))
    machine = json.dumps(to_json(comparison), indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_text(results / "compare.json", machine)
    info(summary_line(comparison))
    return [results / "compare.json", results / "compare.md", results / "compare.png"]


def write_study_results(out: Path, results: Path) -> list[Path]:
    """The comparison, paired.{md,json}, by_batch.png (when some cell's name carries a batch) and
    diagnostics.{md,json} in `results`; the paths written, for the caller to announce."""
    written = write_comparison(out, results)
    compare_json = written[0]
    written.append(write_paired(compare_json))
    if families(read_groups(compare_json)):
        written.append(plot_by_batch(compare_json))
    return [*written, write_diagnostics(out, results)]
