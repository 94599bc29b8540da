"""The study's journal file: Optuna's journal format, read so that a torn or foreign line never stops a study.

Optuna's `JournalFileBackend` stops reading at the first line it cannot decode (every later read of the
study fails with a traceback), and it appends right after whatever ends the file, so a write cut short by a
kill or a full disk glues the next worker's operation onto the torn line, and that operation is lost.
`JournalFile` keeps Optuna's file format (one JSON operation a line), its lock file (taken for every
append) and its write (a batch in one write, then fsync), and changes what the file system can break:

- an append first ends a torn last line, so a new operation always starts on a line of its own;
- a complete line that is not an operation (torn, garbage, JSON without `op_code`) is skipped with one
  warning naming its line number; an unterminated last line is left for later (it may be a write in flight);
- opening it creates nothing, so a command that is refused leaves the folder as it was.

An operation that decodes but does not replay (hand-edited, or written by another program) stops the study
with one line naming the line and `clipctl tune repair`, which rewrites the journal from the lines that
replay and keeps the original beside it (`repair_journal`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend, JournalFileSymlinkLock
from optuna.storages.journal._storage import JournalOperation  # the format's operation codes; not re-exported

from clipctl.console import warn
from clipctl.errors import ClipctlError

OP_CODES = frozenset(int(op) for op in JournalOperation)


def operation(line: bytes) -> dict[str, Any] | None:
    """The Optuna operation on one journal line, or None for a torn, garbage or foreign line."""
    try:
        op = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser's depth
        return None
    if not isinstance(op, dict) or not isinstance(op.get("worker_id"), str):
        return None
    code = op.get("op_code")
    return op if type(code) is int and code in OP_CODES else None


class JournalFile(BaseJournalBackend):
    """An Optuna journal file (see the module docstring for what differs from `JournalFileBackend`).

    Log numbers count operations, not lines: `JournalStorage` asks for the operations after the ones it has
    applied, and skipped lines are never counted, so every reader applies the same operations in one order."""

    def __init__(self, path: Path, repair_hint: str) -> None:
        self.path = path
        self.repair_hint = repair_hint
        self._lock = JournalFileSymlinkLock(str(path))
        self._next = (0, 0, 0)  # (operations read, byte offset, lines read) where the next read starts
        self.last_read: tuple[int, dict[str, Any]] = (0, {})  # (line number, operation) last handed out
        self._warned: set[int] = set()  # lines skipped (a reader counting up again passes them a second time)

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        count, offset, lines = self._next if self._next[0] == log_number_from else (0, 0, 0)
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 - a generator closes it in the with below
        except FileNotFoundError:
            return  # nothing written yet: opening a study creates no file
        with handle:
            handle.seek(offset)
            for raw in handle:
                if not raw.endswith(b"\n"):
                    return  # a write in flight, or one cut short: the next append ends the line
                offset, lines = offset + len(raw), lines + 1
                op = operation(raw)
                if op is None:
                    self._skipped(lines)
                else:
                    count += 1
                if count < log_number_from:
                    continue  # a reader this backend never served: counting up to its position
                self._next = (count, offset, lines)
                if op is not None and count > log_number_from:
                    self.last_read = (lines, op)
                    yield op

    def _skipped(self, line: int) -> None:
        if line not in self._warned:
            self._warned.add(line)
            warn(
                f"{self.path}: line {line} is not an Optuna journal operation (cut short by a kill or a full "
                f"disk, or written by another program); skipped it (`{self.repair_hint}` removes it)"
            )

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Optuna's lock of this journal file: no worker appends while it is held."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        payload = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        try:
            with self.locked(), open(self.path, "a+b") as handle:
                end = handle.seek(0, os.SEEK_END)
                if end:
                    handle.seek(end - 1)
                    if handle.read(1) != b"\n":  # a torn last line: end it, so it is skipped and nothing is glued
                        payload = b"\n" + payload
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            if err.filename is None:  # a failed write or fsync names no file: the journal is the one
                err.filename = str(self.path)
            raise

    def foreign(self) -> bool:
        """Whether the file has complete lines and none of them is an operation: it is not a journal at all."""
        seen = False
        try:
            with open(self.path, "rb") as handle:
                for raw in handle:
                    if not raw.endswith(b"\n"):
                        break
                    if operation(raw) is not None:
                        return False
                    seen = True
        except FileNotFoundError:
            return False
        return seen


class CheckedJournalStorage(JournalStorage):
    """Optuna's journal storage; an operation of another worker that fails to replay is one line naming the
    journal line and the repair command, instead of a traceback from deep inside the replay."""

    def __init__(self, journal: JournalFile) -> None:
        self.journal = journal  # set first: Optuna's constructor replays the file
        super().__init__(journal)

    def _sync_with_backend(self) -> None:
        try:
            super()._sync_with_backend()
        except OSError:
            raise
        except Exception as err:  # noqa: BLE001 - a malformed operation raises whatever its field access raises
            line, op = self.journal.last_read
            if not op or op.get("worker_id") == self._replay_result.worker_id:
                raise  # this worker's own call failed (a duplicate study, a finished trial): Optuna's answer
            raise ClipctlError(
                f"{self.journal.path}: line {line} is an Optuna operation that does not replay "
                f"({type(err).__name__}: {err}); the study cannot be read until the journal is repaired: "
                f"run `{self.journal.repair_hint}` (it keeps a copy of the journal)"
            ) from None


class _Memory(BaseJournalBackend):
    """Operations in a list: the repair replays candidate lines without touching a file."""

    def __init__(self) -> None:
        self.ops: list[dict[str, Any]] = []

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        yield from self.ops[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.ops.extend(logs)


@dataclass
class Replayable:
    """A journal's lines sorted into those that replay (in order) and the line numbers dropped."""

    kept: list[bytes] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    storage: JournalStorage | None = None


def replayable(path: Path) -> Replayable:
    """Replay the journal line by line, as Optuna would, keeping each line that decodes and replays."""
    result, memory = Replayable(), _Memory()
    result.storage = JournalStorage(memory)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            op = operation(raw) if raw.endswith(b"\n") else None
            if op is None:
                result.dropped.append(number)
                continue
            memory.ops.append(op)
            try:
                result.storage.get_all_studies()  # replays the new operation
            except Exception:  # noqa: BLE001 - whatever the malformed operation raises: it is dropped
                memory.ops.pop()
                result.dropped.append(number)
                result.storage = JournalStorage(memory)  # replayed afresh: a failed operation may have half-applied
                continue
            result.kept.append(raw)
    return result


def rewrite(path: Path, kept: list[bytes]) -> Path:
    """Replace the journal by the kept lines (temp file, fsync, rename); the original stays as a `.broken` copy."""
    backup = path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}.broken")
    tmp = path.with_name(f".{path.name}.repair")
    with open(tmp, "wb") as handle:
        handle.writelines(kept)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(path, backup)
    except OSError:
        tmp.unlink()
        raise
    os.replace(tmp, path)
    return backup
