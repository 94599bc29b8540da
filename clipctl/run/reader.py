"""Reading run directories: strictly for a resume (a torn file stops it), leniently for compare and tune
(anything a crash, a kill or a hand edit leaves behind becomes a reason, never an exception)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipctl.console import warn
from clipctl.errors import ClipctlError, ResumeError, UsageError
from clipctl.recipe import read_toml, validate_recipe
from clipctl.run.layout import RECIPE_FILE, RUN_MARKERS, SUMMARY_FILE, RunDir, RunStatus


# ------------------------------------------------------------------------------ strict: resuming a run
def read_json(path: Path, what: str) -> dict[str, Any]:
    """A run file that must parse; a torn or foreign one is a resume problem named in one line (exit 5)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResumeError(
            f"{path}: {what} is torn or not JSON ({err.__class__.__name__}); "
            f"move the run aside and start a new one with --name"
        ) from None
    if not isinstance(value, dict):
        raise ResumeError(f"{path}: {what} is not a JSON object; move the run aside and start a new one with --name")
    return value


def parse_metrics(text: str, source: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records; a torn last line (a kill or a full disk mid-append) is dropped with a warning."""
    lines = [line for line in text.splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif number == len(lines):
            warn(f"{source}: ignoring a torn last line ({number}); a resume rewrites it")
        else:
            raise ResumeError(f"{source}: line {number} is not a JSON record; the metrics log is corrupt")
    return records


def read_metrics(run: RunDir) -> list[dict[str, Any]]:
    """Every record of the run's metrics.jsonl (none before the first append)."""
    if not run.metrics.is_file():
        return []
    return parse_metrics(run.metrics.read_text(encoding="utf-8"), run.metrics)


def completed_summary(run: RunDir) -> dict[str, Any] | None:
    """The stored summary of a completed run; a torn summary.json is refused (exit 5), never trained over."""
    if not run.summary.is_file():
        return None
    summary = read_json(run.summary, SUMMARY_FILE)
    return summary if summary.get("status") == RunStatus.COMPLETED else None


# ------------------------------------------------------------------------------ lenient: compare and tune
SUMMARY_MISSING = "missing"


def read_summary(root: Path) -> tuple[dict[str, Any] | None, str]:
    """(summary, "") or (None, why not): SUMMARY_MISSING when there is none yet."""
    path = RunDir(root).summary
    if not path.is_file():
        return None, SUMMARY_MISSING
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        return None, f"{SUMMARY_FILE} unreadable ({err.__class__.__name__})"
    except json.JSONDecodeError as err:
        return None, f"{SUMMARY_FILE} is not valid JSON (line {err.lineno}: {err.msg})"
    if not isinstance(data, dict):
        return None, f"{SUMMARY_FILE} holds a {type(data).__name__}, expected an object"
    return data, ""


def read_recipe(root: Path) -> tuple[dict[str, Any] | None, str]:
    """(resolved recipe as a dict, "") or (None, why not); a recipe failing today's schema is kept raw."""
    path = RunDir(root).recipe
    if not path.is_file():
        return None, f"{RECIPE_FILE} missing"
    try:
        raw = read_toml(path)
    except UsageError as err:
        return None, f"{RECIPE_FILE} unreadable: {err}".replace(f"{path}: ", "")
    try:
        # Normalise through the schema so hand-written or older recipes group like resolved ones.
        return validate_recipe(dict(raw), str(path)).to_dict(), ""
    except ClipctlError:
        return raw, ""  # still a resolved recipe; newer/older schema keys only affect grouping


@dataclass
class EvalPoint:
    """One `{"type": "eval"}` line of metrics.jsonl."""

    epoch: int
    step: int
    values: dict[str, float]


def finite_number(value: Any) -> float | None:
    """A JSON number that means something: not a bool, not NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def int_or_none(value: Any) -> int | None:
    """A JSON integer, not a bool (JSON's true would pass as 1)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_eval_lines(path: Path) -> tuple[list[EvalPoint], int]:
    """Eval points in file order and the number of unreadable lines (a live run may end mid-line)."""
    points: list[EvalPoint] = []
    bad = 0
    if path.exists() and not path.is_file():  # a FIFO or device would block the read forever
        warn(f"{path}: not a regular file; its eval lines are skipped")
        return points, 0
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return points, 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(record, dict) or record.get("type") != "eval":
            continue
        epoch, step = int_or_none(record.get("epoch")), int_or_none(record.get("step"))
        if epoch is None:
            bad += 1
            continue
        values = {k: v for k, v in ((k, finite_number(v)) for k, v in record.items()) if v is not None and "/" in k}
        points.append(EvalPoint(epoch, step or 0, values))
    return points, bad


@dataclass
class MetricsFollower:
    """metrics.jsonl of a live run, read as it grows: whole lines only, from where the last read stopped,
    from the start again when a resumed trainer rewrote the log shorter."""

    path: Path
    offset: int = 0

    def read_new(self) -> tuple[list[dict[str, Any]], bool]:
        """The records appended since the last call, and whether any line was consumed."""
        try:
            if self.path.stat().st_size < self.offset:
                self.offset = 0
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return [], False
        end = data.rfind(b"\n") + 1
        self.offset += end
        records = []
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records, end > 0


# ------------------------------------------------------------------------------ listing runs
def find_run_dirs(roots: Sequence[Path]) -> list[Path]:
    """Run directories at or below each root, sorted and de-duplicated; a missing root is a usage error."""
    found: dict[Path, None] = {}
    for root in roots:
        if not root.exists():
            raise UsageError(
                f"{root}: no such directory; pass the folder your runs are in (clipctl train writes to "
                "run.out_dir, default runs/)"
            )
        if root.is_file():
            if root.name not in RUN_MARKERS:
                raise UsageError(
                    f"{root}: not a run directory; pass a run folder (with {' or '.join(RUN_MARKERS)}) "
                    f"or a folder of runs"
                )
            root = root.parent
        for path in _walk(root):
            found.setdefault(path.resolve(), None)
    return sorted(found)


def _walk(root: Path) -> Iterable[Path]:
    if RunDir(root).is_run():
        yield root
        return
    for current, dirs, _files in os.walk(root, followlinks=False):
        dirs.sort()
        here = Path(current)
        keep = []
        for name in dirs:
            if name.startswith("."):
                continue
            child = here / name
            if RunDir(child).is_run():
                yield child
            else:
                keep.append(name)
        dirs[:] = keep
