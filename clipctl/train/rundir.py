"""The run directory contract (DESIGN.md) that train writes and eval, compare and tune read."""
from __future__ import annotations

import fcntl
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipctl.atomic import atomic_write_bytes, atomic_write_json
from clipctl.errors import ResumeError, RunConflictError, StorageError, UsageError
from clipctl.console import warn

LOCK_NAME = ".lock"
MAX_NAME_BYTES = 255  # one path component on every common file system


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: Path, payload: Any) -> None:
    atomic_write_json(path, _jsonable(payload), indent=2)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A run file that must parse; a torn or foreign one is a resume problem named in one line (exit 5)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResumeError(f"{path}: {what} is torn or not JSON ({err.__class__.__name__}); "
                          f"move the run aside and start a new one with --name") from None
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


def check_run_name(name: str) -> None:
    """A run name is one folder name: no separators, not `.`/`..`, short enough for the file system."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UsageError(f"run name {name!r}: must be one folder name (no '/'); pass --name NAME")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise UsageError(f"run name of {len(name.encode())} bytes: at most {MAX_NAME_BYTES}; pass a shorter --name")


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.toml"

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def checkpoint(self) -> Path:
        return self.root / "ckpt.pt"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def last_state(self) -> Path:
        return self.state_dir / "last.pt"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def lock(self) -> Path:
        return self.root / LOCK_NAME

    def has_content(self) -> bool:
        return self.root.is_dir() and any(p.name != LOCK_NAME for p in self.root.iterdir())

    def append_metrics(self, record: dict[str, Any]) -> None:
        try:
            with self.metrics.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(_jsonable(record), sort_keys=True) + "\n")
        except OSError as err:  # a full disk fails the write or the close, which name no file
            err.filename = err.filename or str(self.metrics)
            raise

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return parse_metrics(self.metrics.read_text(encoding="utf-8"), self.metrics)

    def truncate_metrics(self, last_step: int, epoch: int) -> None:
        """Drop records logged after the state we resume from, so a resumed log equals an uninterrupted one.

        The state sits at update `last_step` of epoch `epoch` (still to be validated when it was saved
        mid-epoch): an eval of that epoch at that update came after the state and is redone, as is the
        final test pass.
        """
        def before(r: dict[str, Any]) -> bool:
            if r.get("type") == "test":
                return False
            step = r.get("step", 0)
            return step < last_step or (step == last_step and (r.get("type") != "eval" or r.get("epoch", 0) < epoch))

        kept = [r for r in self.read_metrics() if before(r)]
        atomic_write_bytes(self.metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept).encode())

    def remove_stale_temps(self) -> None:
        """Temp files of atomic writes a kill interrupted (`.NAME.XXXX.tmp`, the size of a state each)."""
        for folder in (self.root, self.state_dir):
            for path in folder.glob(".*.tmp") if folder.is_dir() else ():
                path.unlink(missing_ok=True)


class RunClaim:
    """An exclusive lock on a run directory, held for the run's life: a second trainer on the same name
    fails at once (exit 4) instead of writing into the same files. Released when the process ends."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.created = False
        self._fd: int | None = None

    def acquire(self) -> "RunClaim":
        parent = self.run.root.parent
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"--out {parent}: is a file, not a folder; pass a folder for the runs")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            try:
                self.run.root.mkdir()
                self.created = True
            except FileExistsError:
                if not self.run.root.is_dir():
                    raise UsageError(f"{self.run.root}: is a file, not a run directory; "
                                     f"choose another --name") from None
            self._fd = os.open(self.run.lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StorageError.from_os_error(err) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise RunConflictError(f"{self.run.root}: another clipctl process is training this run; "
                                   f"wait for it or choose --name/--out for a new run") from None
        return self

    def release(self, *, failed_before_start: bool = False) -> None:
        """Drop the lock; a folder this claim created and nothing was written to is removed again."""
        if self._fd is None:
            return
        if failed_before_start and self.created and not self.run.has_content():
            self.run.lock.unlink(missing_ok=True)
            self.run.root.rmdir()
        os.close(self._fd)
        self._fd = None
