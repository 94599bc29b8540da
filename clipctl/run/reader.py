"""Reading run directories: strictly for a resume (a torn file stops it), leniently for compare and tune
(anything a crash, a kill or a hand edit leaves behind becomes a reason, never an exception)."""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the `tomli` backport (a dependency there) has the same API
    import tomli as tomllib

from clipctl.console import warn
from clipctl.errors import ClipctlError, ResumeError, UsageError
from clipctl.recipe import validate_recipe
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
# A run writes a summary and a recipe of a few KB, three levels deep. Anything far beyond is not a run's file, and
# reading it whole (a 10 GB file, a JSON array nested 100,000 deep that overflows the parser's recursion) must not
# stop a reader that lists every run; metrics.jsonl grows with the run, hence its own, larger limit.
MAX_RUN_FILE_BYTES = 1 << 20
MAX_METRICS_BYTES = 64 << 20
MAX_NESTING = 32
MAX_SEARCH_DEPTH = 64  # folder levels below a root searched for runs (os.walk recurses once per level)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def read_bounded(path: Path, limit: int) -> tuple[bytes | None, str]:
    """(bytes, "") or (None, why not): a FIFO or device is never read (a read would block or never end), and a
    file over `limit` bytes is not read at all."""
    too_large = f"over the {_mib(limit)} limit for a run's own files; not read"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None, f"{path.name} is not a regular file"
        # O_NONBLOCK and fstat: a FIFO swapped in since the stat cannot block the open either.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                return None, f"{path.name} is not a regular file"
            if info.st_size > limit:
                return None, f"{path.name} is {_mib(info.st_size)}, {too_large}"
            data = handle.read(limit + 1)
    except OSError as err:
        return None, f"{path.name} unreadable ({err.__class__.__name__})"
    return (None, f"{path.name} is {too_large}") if len(data) > limit else (data, "")


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether lists and tables nest deeper than `limit`; iterative, so any depth the parser allowed is safe."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _nested_too_deep(name: str) -> str:
    return f"{name} is nested more than {MAX_NESTING} levels deep (a run writes at most 3)"


def read_summary(root: Path) -> tuple[dict[str, Any] | None, str]:
    """(summary, "") or (None, why not): SUMMARY_MISSING when there is none yet."""
    path = RunDir(root).summary
    if not os.path.lexists(path):
        return None, SUMMARY_MISSING
    data, problem = read_bounded(path, MAX_RUN_FILE_BYTES)
    if data is None:
        return None, problem
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        return None, f"{SUMMARY_FILE} is not UTF-8 text (byte {err.start})"
    except json.JSONDecodeError as err:
        return None, f"{SUMMARY_FILE} is not valid JSON (line {err.lineno}: {err.msg})"
    except ValueError:  # an integer of more digits than Python converts
        return None, f"{SUMMARY_FILE} is not valid JSON (a number too long to read)"
    except RecursionError:
        return None, _nested_too_deep(SUMMARY_FILE)
    if not isinstance(value, dict):
        return None, f"{SUMMARY_FILE} holds a {type(value).__name__}, expected an object"
    if too_deep(value):
        return None, _nested_too_deep(SUMMARY_FILE)
    return value, ""


def read_recipe(root: Path) -> tuple[dict[str, Any] | None, str]:
    """(resolved recipe as a dict, "") or (None, why not); a recipe failing today's schema is kept raw."""
    path = RunDir(root).recipe
    if not os.path.lexists(path):
        return None, f"{RECIPE_FILE} missing"
    data, problem = read_bounded(path, MAX_RUN_FILE_BYTES)
    if data is None:
        return None, problem
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        return None, f"{RECIPE_FILE} is not UTF-8 text (byte {err.start})"
    except tomllib.TOMLDecodeError as err:
        return None, f"{RECIPE_FILE} unreadable: invalid TOML: {err}"
    except RecursionError:
        return None, _nested_too_deep(RECIPE_FILE)
    if too_deep(raw):
        return None, _nested_too_deep(RECIPE_FILE)
    try:
        # Normalise through the schema so hand-written or older recipes group like resolved ones.
        return validate_recipe(dict(raw), str(path), explicit_loss_keys=set()).to_dict(), ""
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


@dataclass
class EvalLines:
    """The eval points of metrics.jsonl in file order, the lines that are not JSON records (a live run may end
    mid-line), and why the file was not read at all (not a regular file, too large, unreadable)."""

    points: list[EvalPoint]
    bad: int = 0
    problem: str = ""


def read_eval_lines(path: Path) -> EvalLines:
    """Eval lines of a run's metrics.jsonl; never raises and never blocks on what the file holds."""
    if not os.path.lexists(path):
        return EvalLines([])
    data, problem = read_bounded(path, MAX_METRICS_BYTES)
    if data is None:
        return EvalLines([], 0, problem)
    out = EvalLines([])
    for line in data.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # torn, foreign, a too-long number, nested past the parser
            out.bad += 1
            continue
        if not isinstance(record, dict) or record.get("type") != "eval":
            continue
        epoch, step = int_or_none(record.get("epoch")), int_or_none(record.get("step"))
        if epoch is None:
            out.bad += 1
            continue
        values = {k: v for k, v in ((k, finite_number(v)) for k, v in record.items()) if v is not None and "/" in k}
        out.points.append(EvalPoint(epoch, step or 0, values))
    return out


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
    base, pruned = len(root.parts), False
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
        if keep and len(here.parts) - base >= MAX_SEARCH_DEPTH:
            pruned, keep = True, []
        dirs[:] = keep
    if pruned:
        warn(f"{root}: not searched deeper than {MAX_SEARCH_DEPTH} folder levels; pass a folder further down")
