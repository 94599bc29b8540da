"""Shared plumbing of the bench scripts: where results go, how they are written, and how targets are checked.

Every benchmark records its targets as `checks` in its JSON, so `bench/_summary.py` can print one table of
all of them without knowing any benchmark's layout. Files starting with `_` are helpers, not benchmarks.
"""

from __future__ import annotations

import operator
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# CLIPCTL_BENCH_RESULTS redirects the output (the smoke test of the scripts writes to a temporary folder).
RESULTS = Path(os.environ.get("CLIPCTL_BENCH_RESULTS") or ROOT / "bench" / "results")
sys.path.insert(0, str(ROOT))

from clipctl.atomic import atomic_write_json  # noqa: E402
from clipctl.console import info  # noqa: E402

_COMPARE = {"<=": operator.le, ">=": operator.ge}


def check(measure: str, value: float | None, op: str, target: float, unit: str = "x") -> dict[str, Any]:
    """One target: `value op target` (e.g. a ratio <= 1.5); a value that could not be measured is 'not run'."""
    status = "not run" if value is None else "met" if _COMPARE[op](value, target) else "missed"
    return {"measure": measure, "value": value, "op": op, "target": target, "unit": unit, "status": status}


def print_checks(checks: list[dict[str, Any]]) -> None:
    """One line per target: the measure, its value, the target and whether it was met."""
    for item in checks:
        value = "-" if item["value"] is None else f"{item['value']:.3f}"
        print(f"{item['measure']}: {value} (target {item['op']} {item['target']}): {item['status']}")


def write_result(name: str, payload: dict[str, Any], checks: list[dict[str, Any]]) -> Path:
    """bench/results/<name>.json, written atomically (and announced), with the checks under one known key."""
    out = RESULTS / f"{name}.json"
    measured_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(out, {"benchmark": name, **payload, "measured_at": measured_at, "checks": checks}, indent=2)
    info(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return out
