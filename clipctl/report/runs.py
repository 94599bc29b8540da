"""What compare makes of a run directory it reads through clipctl.run: every problem becomes a status.

Anything a crash, a kill or a hand edit leaves behind must be reported, never raised.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipctl.console import warn
from clipctl.errors import shorten
from clipctl.report.text import printable
from clipctl.run.layout import SUMMARY_FILE, RunDir, RunProblem, RunStatus
from clipctl.run.reader import (
    SUMMARY_MISSING,
    EvalPoint,
    find_run_dirs,
    finite_number,
    int_or_none,
    read_eval_lines,
    read_recipe,
    read_summary,
)

# Test metrics a completed run must carry (fractions); the others are optional extras.
REQUIRED_TEST_METRICS = ("tr@1", "ir@1", "acc@1")
# A summary number beyond this (wall time: 30,000 years) is no measurement, and a mean of several would overflow.
MAX_SUMMARY_NUMBER = 1e12


def _bounded_repr() -> reprlib.Repr:
    """repr for values quoted in reasons: a 1 MB string or a deep list from summary.json stays a few words."""
    shown = reprlib.Repr()
    shown.maxlevel, shown.maxstring, shown.maxother, shown.maxlist, shown.maxdict = 2, 40, 40, 4, 4
    return shown


_shown = _bounded_repr().repr


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
        return self.status == RunStatus.COMPLETED

    @property
    def seed(self) -> int | None:
        value = self.recipe_value("run", "seed")
        return value if isinstance(value, int) else int_or_none((self.summary or {}).get("seed"))

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
            parts = [finite_number(test.get(k)) for k in REQUIRED_TEST_METRICS]
            return None if any(p is None for p in parts) else sum(parts) / 3  # type: ignore[misc]
        return finite_number(test.get(name))

    @property
    def retrieval_source(self) -> str:
        return self._source("retrieval_source", "test_retrieval")

    @property
    def zeroshot_source(self) -> str:
        return self._source("zeroshot_source", "test_zeroshot")

    def _source(self, summary_key: str, recipe_key: str) -> str:
        test = (self.summary or {}).get("test")
        if isinstance(test, dict) and isinstance(test.get(summary_key), str):
            return shorten(test[summary_key])  # a dataset id; a megabyte of text there would fill every cell
        value = self.recipe_value("eval", recipe_key)
        return shorten(value) if isinstance(value, str) else "?"

    def summary_number(self, key: str) -> float | None:
        value = finite_number((self.summary or {}).get(key))
        return value if value is not None and abs(value) <= MAX_SUMMARY_NUMBER else None

    def evals(self) -> list[EvalPoint]:
        """Eval lines of metrics.jsonl, read on first use (only plots need them)."""
        if self._evals is None:
            lines = read_eval_lines(RunDir(self.path).metrics)
            if lines.problem:
                warn(f"{printable(self.label)}: {lines.problem}; its eval lines are skipped")
            self._evals, self.bad_metric_lines = lines.points, lines.bad
        return self._evals


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def display_label(path: Path) -> str:
    """The path as the user would type it: relative to the working directory when below it."""
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def load_run(path: Path, label: str | None = None) -> Run:
    """Read one run directory; never raises for anything its files contain."""
    run = Run(path=path, label=label or display_label(path), status=RunProblem.INCOMPLETE.value)
    run.recipe, recipe_problem = read_recipe(path)
    run.summary, summary_problem = read_summary(path)
    run.status, run.reason = _classify(run, recipe_problem, summary_problem)
    return run


def _classify(run: Run, recipe_problem: str, summary_problem: str) -> tuple[str, str]:
    corrupt, incomplete = RunProblem.CORRUPT.value, RunProblem.INCOMPLETE.value
    if summary_problem == SUMMARY_MISSING:
        if recipe_problem:
            return corrupt, f"{SUMMARY_FILE} missing and {recipe_problem}"
        return incomplete, f"no {SUMMARY_FILE}: training never started, or was killed before writing one"
    if summary_problem:
        return corrupt, summary_problem
    summary = run.summary or {}
    status = summary.get("status")
    statuses = [s.value for s in RunStatus]
    if status not in statuses:
        return corrupt, f"{SUMMARY_FILE}: status = {_shown(status)}, expected one of {', '.join(statuses)}"
    progress = _progress(summary)
    error = summary.get("error")
    error = _one_line(error) if isinstance(error, str) and error.strip() else ""
    if status == RunStatus.FAILED:
        return RunStatus.FAILED.value, error or f"failed{progress}"
    if status == RunStatus.INTERRUPTED:
        return (
            RunStatus.INTERRUPTED.value,
            f"{error or 'stopped'}{progress}; resume with clipctl train ... --resume auto",
        )
    if status == RunStatus.RUNNING:
        return RunStatus.RUNNING.value, f"running{progress} (or killed without writing a final status)"
    test = summary.get("test")
    if not isinstance(test, dict):
        return corrupt, f"{SUMMARY_FILE}: status completed but no test metrics"
    for key in REQUIRED_TEST_METRICS:
        value = finite_number(test.get(key))
        if value is None or not 0.0 <= value <= 1.0:
            return corrupt, f"{SUMMARY_FILE}: test.{key} = {_shown(test.get(key))}, expected a fraction in [0, 1]"
    if recipe_problem:
        return corrupt, f"{recipe_problem}; cannot tell which recipe produced it"
    return RunStatus.COMPLETED.value, ""


def _one_line(text: str, limit: int = 200) -> str:
    """Trainer errors may hold tracebacks; tables need one short line."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _progress(summary: dict[str, Any]) -> str:
    done, planned = (_count(summary.get(key)) for key in ("epochs_completed", "epochs_planned"))
    if done is None:
        return ""
    return f" after {done} of {planned} epochs" if planned is not None else f" after {done} epochs"


def _count(value: Any) -> int | None:
    number = int_or_none(value)
    return number if number is not None and abs(number) <= MAX_SUMMARY_NUMBER else None


def scan_runs(roots: Sequence[Path]) -> list[Run]:
    """Every run directory below `roots`, read and classified."""
    return [load_run(path) for path in find_run_dirs(roots)]
