"""`clipctl compare`: seed-aggregated results of run directories against the CLIP and SogCLR baselines."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from clipctl.console import console, emit_json, info
from clipctl.errors import UsageError
from clipctl.report.compare import DEFAULT_BASELINES, DEFAULT_METRICS, METRIC_TITLES, build_comparison
from clipctl.report.render import note_lines, rich_tables, summary_line, to_csv, to_json, to_markdown
from clipctl.report.runs import scan_runs
from clipctl.report.text import printable
from clipctl.run.layout import RUN_MARKERS


def _print_unwrapped(table: Table) -> None:
    """On a terminal, fit its width; in logs and pipes, print rows at full width instead of wrapping cells."""
    con = console()
    if con.is_terminal:
        con.print(table)
        return
    width = Measurement.get(con, con.options.update(width=10_000), table).maximum
    Console(file=sys.stderr, width=max(width, con.width), no_color=True, highlight=False).print(table)


# Over 60 lines: most of them declare its Typer options; the body only parses, calls and renders.
def compare(
    runs: list[Path] | None = typer.Argument(
        None, help="Run directories, or folders searched recursively for them (default: ./runs)."
    ),
    baseline: list[str] | None = typer.Option(
        None,
        "--baseline",
        metavar="LOSS",
        help=f"Loss to compute deltas against, repeatable (default: {', '.join(DEFAULT_BASELINES)}).",
    ),
    metric: list[str] | None = typer.Option(
        None,
        "--metric",
        metavar="NAME",
        help=f"Column to show, repeatable: {', '.join(METRIC_TITLES)} (default: {', '.join(DEFAULT_METRICS)}).",
    ),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout (metrics as fractions, deltas in percent)."),
    as_csv: bool = typer.Option(
        False, "--csv", help="CSV on stdout (percent; one row per group, published row, uncounted run)."
    ),
    as_markdown: bool = typer.Option(False, "--markdown", help="Markdown tables on stdout (percent; best in bold)."),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        metavar="PATH",
        help="Also write a PNG: test metrics per group, validation objective per epoch per run.",
    ),
) -> None:
    """Compare runs: mean ± std over seeds, published rows, deltas vs CLIP and SogCLR.

    Runs whose resolved recipes differ only in run.seed, run.name and run.out_dir form one group; only completed runs count, the others (incomplete, failed, interrupted, running, corrupt) are listed with their status and reason.

    Deltas are relative changes in percent against a measured baseline group (same loss, same test data) when the runs hold one, else against the published row, and only where the published test sets (MSCOCO 5k, ImageNet) match; shapes runs get no published deltas. Against a baseline below 1% a delta is the absolute difference in percentage points (pp). A measured baseline whose recipe differs in more than the loss (the starting temperature included) says so in its note.

    TR@1 = image->text retrieval, IR@1 = text->image. Tables go to stderr, --json/--csv/--markdown to stdout. No run directory found: exit 2.

    Example: clipctl compare runs/ --markdown --plot compare.png
    """
    formats = [name for name, on in (("--json", as_json), ("--csv", as_csv), ("--markdown", as_markdown)) if on]
    if len(formats) > 1:
        raise UsageError(f"{' and '.join(formats)}: choose one output format")
    roots = runs or [Path("runs")]
    if not runs and not roots[0].is_dir():
        raise UsageError(
            "no ./runs folder here; pass the folders holding your runs (clipctl compare path/to/runs) "
            "or train one first (clipctl train quickstart)"
        )
    found = scan_runs(roots)
    if not found:
        where = " ".join(str(r) for r in roots)
        raise UsageError(
            f"no run directories under {where} (a run directory holds {' or '.join(RUN_MARKERS)}); "
            "train one with clipctl train quickstart"
        )
    comparison = build_comparison(found, metric, baseline)
    if as_json:
        emit_json(to_json(comparison))
    elif as_csv:
        sys.stdout.write(to_csv(comparison))
    elif as_markdown:
        sys.stdout.write(to_markdown(comparison))
    else:
        for table in rich_tables(comparison):
            _print_unwrapped(table)
        for line in note_lines(comparison):
            info(line)
    if formats:
        info(summary_line(comparison))
    if plot is not None:
        from clipctl.report.plots import write_plot

        info(f"wrote {printable(str(write_plot(comparison, plot)))}")
