"""Console helpers shared by every command: humans read stderr (Rich on a TTY), machines read stdout (--json)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

_stderr: Console | None = None
OFF_TERMINAL_WIDTH = 1000  # a log or pipe has no width: tables keep whole cells instead of Rich's 80 columns


def launched_rank() -> int:
    """This process's rank when a launcher started several (torchrun and `accelerate launch` set RANK), else 0."""
    return int(os.environ.get("RANK") or 0)


def console() -> Console:
    """The stderr console; honours NO_COLOR and plain output off a terminal. Under a multi-process launch every
    rank runs the same command, so only rank 0 talks; errors bypass the console and come from every rank."""
    global _stderr
    if _stderr is None or _stderr.file is not sys.stderr:
        width = None if sys.stderr.isatty() else OFF_TERMINAL_WIDTH
        _stderr = Console(
            stderr=True,
            no_color=bool(os.environ.get("NO_COLOR")),
            highlight=False,
            soft_wrap=True,
            width=width,
            quiet=launched_rank() != 0,
        )
    return _stderr


def interactive() -> bool:
    """True when progress may redraw frames (stderr is a real terminal and not in CI)."""
    return sys.stderr.isatty() and not os.environ.get("CI")


# Control (Cc), format (Cf: bidi overrides, zero-width), surrogate (Cs) and line/paragraph separators.
_ESCAPED = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if unicodedata.category(char) not in _ESCAPED:
        return char
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """`text` with every control, format and separator character written as a Python escape (`\\x1b`, `\\n`)."""
    return text if text.isprintable() else "".join(_escape(char) for char in text)


_transcripts: list[IO[str]] = []


@contextmanager
def transcript(handle: IO[str]) -> Iterator[None]:
    """While open, every line this process prints (and a plain progress line where a terminal shows a bar) is also
    written to `handle` as plain text: the run folder's `train.log`."""
    _transcripts.append(handle)
    try:
        yield
    finally:
        _transcripts.remove(handle)


def transcribe(line: str) -> None:
    """Write one line to the open transcripts only (what the screen shows otherwise, e.g. as a redrawn bar). A
    transcript that cannot be written (a full disk) never stops the command: its own writes report the disk."""
    for handle in _transcripts:
        try:
            handle.write(printable(line) + "\n")
        except OSError:
            pass


def info(message: str) -> None:
    console().print(printable(message), markup=False)
    transcribe(message)


def warn(message: str) -> None:
    console().print(f"warning: {printable(message)}", style="yellow", markup=False)
    transcribe(f"warning: {message}")


def warn_any_rank(message: str) -> None:
    """A warning about what only this process meets (a shard only its loader reads): under a multi-process launch
    the other ranks' consoles are quiet, so it goes to stderr with the rank's number instead (as errors do)."""
    rank = launched_rank()
    if rank == 0:
        warn(message)
        return
    sys.stderr.write(f"warning: rank {rank}: {printable(message)}\n")
    sys.stderr.flush()


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """A warning a process prints once however often its cause recurs (e.g. every resume of a converted state)."""
    if message not in _warned:
        _warned.add(message)
        warn(message)


def emit_json(payload: Any) -> None:
    """Machine output: one JSON document on stdout (rank 0's, under a multi-process launch)."""
    if launched_rank() != 0:
        return
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A Rich table; columns whose cells are all numbers are right-aligned."""
    rows = [list(row) for row in rows]
    out = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        numeric = bool(rows) and all(isinstance(row[i], (int, float)) for row in rows)
        out.add_column(column, justify="right" if numeric else "left")
    for row in rows:
        out.add_row(*(str(cell) for cell in row))
    return out


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    console().print(table(title, columns, rows))


def print_listing(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A listing a user may pipe (`clipctl recipes ls | grep sogclr`): on stdout, a Rich table on a terminal,
    else a header and one tab-separated line per row, without box drawing or a title."""
    rows = [list(row) for row in rows]
    if sys.stdout.isatty():
        Console(no_color=bool(os.environ.get("NO_COLOR")), highlight=False).print(table(title, columns, rows))
        return
    for row in [list(columns), *rows]:
        sys.stdout.write("\t".join(printable(str(cell)) for cell in row) + "\n")
    sys.stdout.flush()


def percent(fraction: float) -> str:
    """A metric for humans: every screen shows recalls, accuracies and objectives in percent (JSON keeps the
    fractions the files hold)."""
    return f"{100 * fraction:.2f}%"


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressReporter:
    """A progress display: a Rich bar on a terminal, plain periodic lines elsewhere (never redraws).

    `fields` passed to `update` (loss, lr, τ, ...) are shown after the bar or at the end of the line.
    """

    def __init__(
        self,
        description: str,
        total: float | None,
        unit: str = "it",
        *,
        bytes_mode: bool = False,
        every_seconds: float = 10.0,
    ) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.every_seconds = every_seconds
        self.completed = 0.0
        self.fields: dict[str, Any] = {}
        self._start = time.monotonic()
        self._last_line = self._start
        self._rich: Progress | None = None
        if interactive():
            columns = [TextColumn("[bold]{task.description}"), BarColumn()]
            columns += (
                [DownloadColumn(), TransferSpeedColumn()]
                if bytes_mode
                else [MofNCompleteColumn(), TaskProgressColumn()]
            )
            columns += [TimeRemainingColumn(), TextColumn("{task.fields[extra]}")]
            self._rich = Progress(*columns, console=console(), transient=False)
            self._rich.start()
            self._task = self._rich.add_task(description, total=total, extra="")

    def update(self, advance: float = 1.0, completed: float | None = None, **fields: Any) -> None:
        self.completed = completed if completed is not None else self.completed + advance
        self.fields.update(fields)
        now = time.monotonic()
        due = now - self._last_line >= self.every_seconds
        if due:
            self._last_line = now
        if self._rich is not None:
            self._rich.update(self._task, completed=self.completed, extra=self._fields_text())
            if due:
                transcribe(self.line())
        elif due:
            info(self.line())

    def line(self) -> str:
        elapsed = time.monotonic() - self._start
        rate = self.completed / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.description}:"]
        if self.total:
            parts.append(
                f"{self.completed:.0f}/{self.total:.0f} {self.unit} ({100 * self.completed / self.total:.1f}%)"
            )
            eta = (self.total - self.completed) / rate if rate > 0 else float("inf")
            parts.append(f"{rate:.1f} {self.unit}/s ETA {format_duration(eta)}")
        else:
            parts.append(f"{self.completed:.0f} {self.unit} {rate:.1f} {self.unit}/s")
        text = self._fields_text()
        return " ".join(parts) + (f" {text}" if text else "")

    def _fields_text(self) -> str:
        def fmt(value: Any) -> str:
            return f"{value:.4g}" if isinstance(value, float) else str(value)

        return " ".join(f"{k}={fmt(v)}" for k, v in self.fields.items())

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
            transcribe(self.line())
        else:
            info(self.line())

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None and not self.completed and self._rich is None:
            return  # failed before any progress: the error line says it all, "0/N" would be noise
        self.close()
