"""Output formats of a Comparison: Rich tables (stderr), JSON (fractions), CSV and Markdown (percent).

JSON follows the project convention of fractions for metrics; CSV and Markdown are tables people
read or paste, so they are in percent with `_pct` in the CSV column names. Every string that reaches
any format passes `printable` first: folder names and summary values are whatever someone wrote there.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

from rich.markup import escape
from rich.table import Table

from clipctl.console import format_duration, table
from clipctl.report import baselines as pub
from clipctl.report.compare import METRIC_TITLES, Comparison, Delta, Difference, Group, Stat
from clipctl.report.text import printable, printable_tree

DASH = "—"


def _pct(value: float | None, digits: int = 2) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def stat_cell(stat: Stat) -> str:
    """`12.34 ± 0.56` (percent) for n >= 2, the bare mean for one run."""
    if stat.mean is None:
        return DASH
    mean = 100.0 * stat.mean
    return f"{mean:.2f}" if stat.std is None else f"{mean:.2f} ± {100.0 * stat.std:.2f}"


def delta_cell(delta: Delta, metric: str) -> str:
    """`+25.0%`, or `+1.23 pp` where the baseline is below 1% (see compare.NEAR_ZERO_PCT)."""
    if metric in delta.in_points:
        points = delta.points.get(metric)
        return DASH if points is None else f"{points:+.2f} pp"
    value = delta.percent.get(metric)
    return DASH if value is None else f"{value:+.1f}%"


def _epochs(group: Group) -> str:
    epochs = group.epochs
    if not epochs:
        return "?"
    return str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}"


def _wall(group: Group) -> str:
    mean = group.summary_stat("wall_time_s").mean
    return DASH if mean is None else format_duration(mean)


def _speed(group: Group) -> str:
    mean = group.summary_stat("samples_per_s").mean
    return DASH if mean is None else f"{mean:.1f}"


def _published_metric(row: pub.PublishedRow, metric: str) -> str:
    value = row.metric(metric)
    return _pct(value) + ("†" if row.footnote and metric in ("acc@1", "average") else "")


def _reference(delta: Delta) -> str:
    if delta.kind == "measured":
        return f"measured: {delta.reference}"
    if delta.kind == "published":
        return f"published: {delta.reference}"
    return "(this is the baseline)" if delta.kind == "self" else "none"


# -------------------------------------------------------------------------------- tables as cells


def _safe(escape_for_format: Callable[[str], str]) -> Callable[[str], str]:
    """Free text made printable, then escaped for the format (Rich markup, Markdown pipes)."""
    return lambda text: escape_for_format(printable(text))


def main_columns(c: Comparison) -> list[str]:
    return [
        "run / group",
        "n",
        "loss",
        *(METRIC_TITLES[m] for m in c.metrics),
        "retrieval",
        "zero-shot",
        "epochs",
        "wall",
        "samples/s",
        "status",
    ]


def main_rows(
    c: Comparison, bold: Callable[[str], str] = lambda s: s, text: Callable[[str], str] = lambda s: s
) -> list[list[str]]:
    """Measured groups then published rows; `bold` marks best cells, `text` escapes free text for the format
    (after `printable`)."""
    text = _safe(text)
    rows = []
    for g in c.groups:

        def mark(column: str, cell: str, key: str = g.key) -> str:
            return bold(cell) if (key, column) in c.best else cell

        rows.append(
            [
                text(g.label),
                str(len(g.runs)),
                text(g.loss),
                *(mark(m, stat_cell(g.stat(m))) for m in c.metrics),
                text(g.retrieval_source),
                text(g.zeroshot_source),
                _epochs(g),
                _wall(g),
                mark("samples_per_s", _speed(g)),
                text(g.status),
            ]
        )
    for row in c.published:
        rid = f"published:{row.key}"
        cells = [
            bold(_published_metric(row, m)) if (rid, m) in c.best else _published_metric(row, m) for m in c.metrics
        ]
        rows.append(
            [
                text(f"{row.label} [published]"),
                DASH,
                row.key,
                *cells,
                pub.RETRIEVAL_LABEL,
                pub.ZEROSHOT_LABEL,
                "30",
                DASH,
                DASH,
                text(f"published ({row.citation})"),
            ]
        )
    return rows


def delta_columns(c: Comparison) -> list[str]:
    return ["group", "vs", "against", *(f"Δ{METRIC_TITLES[m]}" for m in c.metrics), "note"]


def delta_rows(c: Comparison, text: Callable[[str], str] = lambda s: s) -> list[list[str]]:
    text = _safe(text)
    rows = []
    for g in c.groups:
        for d in c.deltas[g.key]:
            rows.append(
                [
                    text(g.label),
                    d.baseline,
                    text(_reference(d)),
                    *(delta_cell(d, m) for m in c.metrics),
                    text(d.note),
                ]
            )
    return rows


EXCLUDED_COLUMNS = ["run directory", "status", "reason"]


def excluded_rows(c: Comparison, text: Callable[[str], str] = lambda s: s) -> list[list[str]]:
    text = _safe(text)
    return [[text(r.label), r.status, text(r.reason)] for r in c.excluded]


def note_lines(c: Comparison) -> list[str]:
    """The notes as the human output prints them below the tables."""
    return [f"- {printable(note)}" for note in c.notes]


def summary_line(c: Comparison) -> str:
    return f"compare: {c.counted_runs} completed run(s) in {len(c.groups)} group(s), {len(c.excluded)} not counted"


# -------------------------------------------------------------------------------------- formats


def rich_tables(c: Comparison) -> list[Table]:
    """Tables for humans on stderr (bold = best per column; Rich drops styles off a terminal)."""
    main = table(
        f"compare: {c.counted_runs} completed run(s) in {len(c.groups)} group(s)",
        main_columns(c),
        main_rows(c, bold=lambda s: f"[bold]{s}[/bold]", text=escape),
    )
    for column in main.columns[1:]:
        if column.header not in ("loss", "retrieval", "zero-shot", "status"):
            column.justify = "right"
    out = [main]
    if c.groups:
        out.append(
            table(f"deltas vs {', '.join(c.baselines)} ({_delta_units(c)})", delta_columns(c), delta_rows(c, escape))
        )
    if c.excluded:
        out.append(table("not counted", EXCLUDED_COLUMNS, excluded_rows(c, text=escape)))
    return out


def _delta_units(c: Comparison) -> str:
    in_points = any(d.in_points for rows in c.deltas.values() for d in rows)
    return "relative, percent; pp: absolute, percentage points" if in_points else "relative, percent"


def _difference_json(d: Difference) -> dict[str, Any]:
    return {"key": d.key, "value": d.value, "baseline_key": d.baseline_key, "baseline_value": d.baseline_value}


def _stat_json(stat: Stat) -> dict[str, Any]:
    return {"mean": stat.mean, "std": stat.std, "n": stat.n, "values": stat.values}


# Over 60 lines: one literal, the schema of `compare --json`, kept whole so it can be read as one.
def to_json(c: Comparison) -> dict[str, Any]:
    """The whole comparison; metrics and their stats are fractions, deltas are percent."""
    groups = []
    for g in c.groups:
        groups.append(
            {
                "id": g.key,
                "label": g.label,
                "kind": "measured",
                "loss": g.loss,
                "optimizer": g.optimizer,
                "n": len(g.runs),
                "seeds": g.seeds,
                "runs": [r.label for r in g.runs],
                "not_counted": [{"run": r.label, "status": r.status, "reason": r.reason} for r in g.others],
                "retrieval_source": g.retrieval_source,
                "zeroshot_source": g.zeroshot_source,
                "metrics": {m: _stat_json(g.stat(m)) for m in c.metrics},
                "epochs_completed": g.epochs,
                "wall_time_s": _stat_json(g.summary_stat("wall_time_s")),
                "samples_per_s": _stat_json(g.summary_stat("samples_per_s")),
                "status": g.status,
                "deltas_pct": {
                    d.baseline: {
                        "reference": d.kind,
                        "against": d.reference,
                        "against_runs": d.runs,
                        "values": d.percent,
                        "points": {m: d.points.get(m) for m in c.metrics},
                        "in_points": d.in_points,
                        "recipe_differences": [_difference_json(x) for x in d.differences],
                        "note": d.note,
                    }
                    for d in c.deltas[g.key]
                },
                "best": sorted(col for rid, col in c.best if rid == g.key),
            }
        )
    published = []
    for row in c.published:
        rid = f"published:{row.key}"
        published.append(
            {
                "id": rid,
                "label": row.label,
                "kind": "published",
                "loss": row.key,
                "citation": row.citation,
                "retrieval_source": pub.RETRIEVAL_LABEL,
                "zeroshot_source": pub.ZEROSHOT_LABEL,
                "metrics": {m: (None if row.metric(m) is None else row.metric(m) / 100.0) for m in c.metrics},
                "footnote": row.footnote or None,
                "best": sorted(col for r, col in c.best if r == rid),
            }
        )
    return printable_tree(
        {
            "metrics": c.metrics,
            "baselines": c.baselines,
            "units": {
                "metrics": "fraction",
                "deltas_pct": "values: relative change in percent, null for the metrics in in_points "
                "(baseline below 1%); points: absolute difference in percentage points",
            },
            "groups": groups,
            "published": published,
            "not_counted": [{"run": r.label, "status": r.status, "reason": r.reason} for r in c.excluded],
            "notes": c.notes,
        }
    )


def to_csv(c: Comparison) -> str:
    """One row per measured group, published row and uncounted run (column `kind` tells which)."""
    header = ["kind", "label", "n", "seeds", "runs", "loss", "optimizer", "retrieval_source", "zeroshot_source"]
    for m in c.metrics:
        header += [f"{m}_mean_pct", f"{m}_std_pct"]
    header += ["epochs", "wall_time_s", "samples_per_s", "status", "reason"]
    for b in c.baselines:
        header += [f"delta_{b}_reference", f"delta_{b}_against"] + [f"delta_{b}_{m}_pct" for m in c.metrics]
        header += [f"delta_{b}_{m}_pp" for m in c.metrics]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    rows = [_group_csv_row(c, g) for g in c.groups] + [_published_csv_row(c, p) for p in c.published]
    rows += [
        {"kind": "not_counted", "label": r.label, "runs": r.label, "status": r.status, "reason": r.reason}
        for r in c.excluded
    ]
    writer.writerows(_printable_row(row) for row in rows)
    return buffer.getvalue()


def _csv_number(value: float | None, scale: float = 1.0) -> str:
    return "" if value is None else f"{scale * value:.6g}"


def _group_csv_row(c: Comparison, g: Group) -> dict[str, Any]:
    row: dict[str, Any] = {
        "kind": "measured",
        "label": g.label,
        "n": len(g.runs),
        "seeds": " ".join(str(s) for s in g.seeds),
        "runs": " ".join(r.label for r in g.runs),
        "loss": g.loss,
        "optimizer": g.optimizer,
        "retrieval_source": g.retrieval_source,
        "zeroshot_source": g.zeroshot_source,
        "epochs": _epochs(g),
        "wall_time_s": _csv_number(g.summary_stat("wall_time_s").mean),
        "samples_per_s": _csv_number(g.summary_stat("samples_per_s").mean),
        "status": g.status,
        "reason": "",
    }
    for m in c.metrics:
        stat = g.stat(m)
        row[f"{m}_mean_pct"], row[f"{m}_std_pct"] = _csv_number(stat.mean, 100.0), _csv_number(stat.std, 100.0)
    for d in c.deltas[g.key]:
        row[f"delta_{d.baseline}_reference"], row[f"delta_{d.baseline}_against"] = d.kind, d.reference
        for m in c.metrics:
            row[f"delta_{d.baseline}_{m}_pct"] = _csv_number(d.percent.get(m))
            row[f"delta_{d.baseline}_{m}_pp"] = _csv_number(d.points.get(m))
    return row


def _published_csv_row(c: Comparison, p: pub.PublishedRow) -> dict[str, Any]:
    row: dict[str, Any] = {
        "kind": "published",
        "label": p.label,
        "loss": p.key,
        "retrieval_source": pub.RETRIEVAL_LABEL,
        "zeroshot_source": pub.ZEROSHOT_LABEL,
        "epochs": "30",
        "status": "published",
        "reason": p.citation,
    }
    for m in c.metrics:
        row[f"{m}_mean_pct"] = _csv_number(p.metric(m))
    return row


def _printable_row(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV record stays one line: quoting would keep a newline in a field, but not an ANSI escape."""
    return {key: printable(value) if isinstance(value, str) else value for key, value in row.items()}


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def to_markdown(c: Comparison) -> str:
    """Tables to paste in a README or report: results, deltas, uncounted runs, then the notes."""
    lines = [f"### clipctl compare: {c.counted_runs} completed run(s) in {len(c.groups)} group(s)", ""]
    lines += _md_table(main_columns(c), main_rows(c, bold=lambda s: f"**{s}**", text=_md_escape))
    if c.groups:
        lines += ["", f"#### Deltas vs {', '.join(c.baselines)}", ""]
        lines += _md_table(delta_columns(c), delta_rows(c, text=_md_escape))
    if c.excluded:
        lines += ["", "#### Not counted", ""]
        lines += _md_table(EXCLUDED_COLUMNS, excluded_rows(c, text=_md_escape))
    lines += [""] + [_md_escape(line) for line in note_lines(c)]
    return "\n".join(lines) + "\n"
