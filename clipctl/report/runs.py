"""Read run directories (the trainer's contract) without trusting them: every problem becomes a status.

A run directory is a folder holding `recipe.toml` or `summary.json`. `compare` and `tune` only read
these files, so anything a crash, a kill or a hand edit leaves behind must be reported, never raised.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from clipctl.errors import ClipctlError, UsageError
from clipctl.recipe import read_toml, validate_recipe
from clipctl.console import warn

RUN_MARKERS = ("recipe.toml", "summary.json")
TRAINER_STATUSES = ("completed", "failed", "interrupted", "running")
STATUSES = TRAINER_STATUSES + ("corrupt", "incomplete")
# Test metrics a completed run must carry (fractions); the others are optional extras.
REQUIRED_TEST_METRICS = ("tr@1", "ir@1", "acc@1")
# Sub-folders the trainer writes inside a run; never searched for nested runs.
_RUN_SUBDIRS = {"state", "eval", "tb"}


@dataclass
class EvalPoint:
    """One `{"type": "eval"}` line of metrics.jsonl."""

    epoch: int
    step: int
    values: dict[str, float]


@dataclass
class Run:
    """What one run directory says about itself; `status`/`reason` explain why it does or does not count."""

    path: Path
    label: str
    status: str
    reason: str = ""
    recipe: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    _evals: list[EvalPoint] | None = field(default=None, repr=False)
    bad_metric_lines: int = 0

    @property
    def counted(self) -> bool:
        """Only completed runs with their test metrics enter the aggregates."""
        return self.status == "completed"

    @property
    def seed(self) -> int | None:
        value = self.recipe_value("run", "seed")
        return value if isinstance(value, int) else _int_or_none((self.summary or {}).get("seed"))

    @property
    def loss(self) -> str | None:
        name = self.recipe_value("loss", "name")
        return name if isinstance(name, str) else _str_or_none((self.summary or {}).get("loss"))

    @property
    def optimizer(self) -> str | None:
        name = self.recipe_value("optim", "name")
        return name if isinstance(name, str) else _str_or_none((self.summary or {}).get("optimizer"))

    def recipe_value(self, section: str, key: str) -> Any:
        """A recipe key, or None; a recipe that failed the schema may have any shape."""
        table = (self.recipe or {}).get(section)
        return table.get(key) if isinstance(table, dict) else None

    def test_metric(self, name: str) -> float | None:
        """A test metric as a fraction; `average` is the report's objective (TR@1 + IR@1 + ACC@1) / 3."""
        test = (self.summary or {}).get("test")
        if not isinstance(test, dict):
            return None
        if name == "average":
            parts = [_finite(test.get(k)) for k in REQUIRED_TEST_METRICS]
            return None if any(p is None for p in parts) else sum(parts) / 3  # type: ignore[misc]
        return _finite(test.get(name))

    @property
    def retrieval_source(self) -> str:
        return self._source("retrieval_source", "test_retrieval")

    @property
    def zeroshot_source(self) -> str:
        return self._source("zeroshot_source", "test_zeroshot")

    def _source(self, summary_key: str, recipe_key: str) -> str:
        test = (self.summary or {}).get("test")
        if isinstance(test, dict) and isinstance(test.get(summary_key), str):
            return test[summary_key]
        value = self.recipe_value("eval", recipe_key)
        return value if isinstance(value, str) else "?"

    def summary_number(self, key: str) -> float | None:
        return _finite((self.summary or {}).get(key))

    def evals(self) -> list[EvalPoint]:
        """Eval lines of metrics.jsonl, read on first use (only plots need them)."""
        if self._evals is None:
            self._evals, self.bad_metric_lines = read_eval_lines(self.path / "metrics.jsonl")
        return self._evals


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


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
        epoch, step = _int_or_none(record.get("epoch")), _int_or_none(record.get("step"))
        if epoch is None:
            bad += 1
            continue
        values = {k: v for k, v in ((k, _finite(v)) for k, v in record.items()) if v is not None and "/" in k}
        points.append(EvalPoint(epoch, step or 0, values))
    return points, bad


def find_run_dirs(roots: Sequence[Path]) -> list[Path]:
    """Run directories at or below each root, sorted and de-duplicated; a missing root is a usage error."""
    found: dict[Path, None] = {}
    for root in roots:
        if not root.exists():
            raise UsageError(f"{root}: no such directory; pass the folder your runs are in (clipctl train writes to run.out_dir, default runs/)")
        if root.is_file():
            if root.name not in RUN_MARKERS:
                raise UsageError(f"{root}: not a run directory; pass a run folder (with recipe.toml or summary.json) or a folder of runs")
            root = root.parent
        for path in _walk(root):
            found.setdefault(path.resolve(), None)
    return sorted(found)


def _walk(root: Path) -> Iterable[Path]:
    if _is_run_dir(root):
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
            if _is_run_dir(child):
                yield child
            else:
                keep.append(name)
        dirs[:] = keep


def _is_run_dir(path: Path) -> bool:
    return any((path / marker).is_file() for marker in RUN_MARKERS)


def display_label(path: Path) -> str:
    """The path as the user would type it: relative to the working directory when below it."""
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def load_run(path: Path, label: str | None = None) -> Run:
    """Read one run directory; never raises for anything its files contain."""
    run = Run(path=path, label=label or display_label(path), status="incomplete")
    recipe_problem = _read_recipe(run)
    summary_problem = _read_summary(run)
    run.status, run.reason = _classify(run, recipe_problem, summary_problem)
    return run


def _read_recipe(run: Run) -> str:
    path = run.path / "recipe.toml"
    if not path.is_file():
        return "recipe.toml missing"
    try:
        raw = read_toml(path)
    except UsageError as err:
        return f"recipe.toml unreadable: {err}".replace(f"{path}: ", "")
    try:
        # Normalise through the schema so hand-written or older recipes group like resolved ones.
        run.recipe = validate_recipe(dict(raw), str(path)).to_dict()
    except ClipctlError:
        run.recipe = raw  # still a resolved recipe; newer/older schema keys only affect grouping
    return ""


def _read_summary(run: Run) -> str:
    path = run.path / "summary.json"
    if not path.is_file():
        return "missing"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        return f"summary.json unreadable ({err.__class__.__name__})"
    except json.JSONDecodeError as err:
        return f"summary.json is not valid JSON (line {err.lineno}: {err.msg})"
    if not isinstance(data, dict):
        return f"summary.json holds a {type(data).__name__}, expected an object"
    run.summary = data
    return ""


def _classify(run: Run, recipe_problem: str, summary_problem: str) -> tuple[str, str]:
    if summary_problem == "missing":
        if recipe_problem:
            return "corrupt", f"summary.json missing and {recipe_problem}"
        return "incomplete", "no summary.json: training never started, or was killed before writing one"
    if summary_problem:
        return "corrupt", summary_problem
    summary = run.summary or {}
    status = summary.get("status")
    if status not in TRAINER_STATUSES:
        return "corrupt", f"summary.json: status = {status!r}, expected one of {', '.join(TRAINER_STATUSES)}"
    progress = _progress(summary)
    error = summary.get("error")
    error = _one_line(error) if isinstance(error, str) and error.strip() else ""
    if status == "failed":
        return "failed", error or f"failed{progress}"
    if status == "interrupted":
        return "interrupted", f"{error or 'stopped'}{progress}; resume with clipctl train ... --resume auto"
    if status == "running":
        return "running", f"running{progress} (or killed without writing a final status)"
    test = summary.get("test")
    if not isinstance(test, dict):
        return "corrupt", "summary.json: status completed but no test metrics"
    for key in REQUIRED_TEST_METRICS:
        value = _finite(test.get(key))
        if value is None or not 0.0 <= value <= 1.0:
            return "corrupt", f"summary.json: test.{key} = {test.get(key)!r}, expected a fraction in [0, 1]"
    if recipe_problem:
        return "corrupt", f"{recipe_problem}; cannot tell which recipe produced it"
    return "completed", ""


def _one_line(text: str, limit: int = 200) -> str:
    """Trainer errors may hold tracebacks; tables need one short line."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _progress(summary: dict[str, Any]) -> str:
    done, planned = _int_or_none(summary.get("epochs_completed")), _int_or_none(summary.get("epochs_planned"))
    if done is None:
        return ""
    return f" after epoch {done}/{planned}" if planned is not None else f" after epoch {done}"


def scan_runs(roots: Sequence[Path]) -> list[Run]:
    """Every run directory below `roots`, read and classified."""
    return [load_run(path) for path in find_run_dirs(roots)]
