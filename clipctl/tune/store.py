"""The study folder: `study.toml` (frozen phase plans) and `journal.jsonl` (append-only events).

The journal is the single source of truth. Every event is one JSON line written with one `write` and
an `fsync`, under an exclusive `flock` on `journal.lock`, so several workers (processes, or machines on
a shared filesystem with working locks) can share a study. Workers hold a lock on their own file under
`workers/` while alive; a trial whose worker's lock can be taken was orphaned by a crash and is re-run.
Replaying the events (`StudyState`) gives every trial's status without any optimizer.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import secrets
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from clipctl.atomic import atomic_write_text
from clipctl.errors import UsageError
from clipctl.recipe import read_toml

STUDY_FILE = "study.toml"
JOURNAL_FILE = "journal.jsonl"
LOCK_FILE = "journal.lock"
WORKERS_DIR = "workers"
FINISHED = ("trial_completed", "trial_failed", "trial_pruned")
STATUSES = ("completed", "failed", "pruned", "running")
STUDY_VERSION = 1


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Journal:
    """Append-only JSON lines; `locked()` is re-entrant for one handle and exclusive across handles."""

    def __init__(self, root: Path) -> None:
        self.path = root / JOURNAL_FILE
        self.lock_path = root / LOCK_FILE
        self._lock_fd: int | None = None
        self._depth = 0
        self._warned_offsets: set[int] = set()

    @contextmanager
    def locked(self) -> Iterator[None]:
        if self._depth == 0:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_fd = fd
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None

    def append(self, events: list[dict[str, Any]]) -> None:
        """Write each event as one line (one write + fsync each); the caller holds the lock. Ctrl-C and
        SIGTERM wait until the batch is written, so a batch of proposals is never half recorded."""
        if self._depth == 0:
            raise RuntimeError("Journal.append needs the journal lock")
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size:
                    with open(self.path, "rb") as handle:  # a crash mid-line must not glue two events together
                        handle.seek(size - 1)
                        if handle.read(1) != b"\n":
                            os.write(fd, b"\n")
                for event in events:
                    line = json.dumps(event, sort_keys=True, allow_nan=False) + "\n"
                    os.write(fd, line.encode("utf-8"))
                    os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def read(self, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Complete events after byte `offset`, and the offset after the last complete line."""
        if not self.path.exists():
            return [], 0
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        events = []
        position = offset
        for raw in data[:end].split(b"\n")[:-1]:
            if raw.strip():
                try:
                    event = json.loads(raw)
                    if not _well_formed(event):
                        raise ValueError("not an event object")
                    events.append(event)
                except ValueError:
                    if position not in self._warned_offsets:
                        self._warned_offsets.add(position)
                        sys.stderr.write(
                            f"clipctl: warning: {self.path}: skipping an unreadable line at byte {position}\n"
                        )
            position += len(raw) + 1
        return events, offset + end


def _well_formed(event: Any) -> bool:
    """An event the replay can apply: trial events carry an integer trial id, every event its phase."""
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return False
    if not isinstance(event.get("phase"), int) or isinstance(event.get("phase"), bool):
        return False
    if event["event"] == "phase_closed":
        return True
    trial = event.get("trial")
    if not isinstance(trial, int) or isinstance(trial, bool):
        return False
    return (
        event["event"] != "trial_started"
        or event.get("rerun")
        or (isinstance(event.get("point"), dict) and isinstance(event.get("params"), dict))
    )


@dataclass
class TrialRecord:
    phase: int
    trial: int
    point: dict[str, Any]
    params: dict[str, Any]
    proposed: dict[str, Any]
    loss: str
    optimizer: str
    ask: str | None
    worker: str
    status: str = "running"  # running | completed | failed | pruned
    value: float | None = None  # what the optimizer was told (maximised)
    raw: float | None = None  # the measured objective, if finite
    flagged: bool = False  # value is a penalty, not a measurement
    reason: str = ""
    starts: int = 1
    wall_s: float = 0.0
    epochs: dict[int, float | None] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return trial_name(self.trial)


def trial_name(number: int) -> str:
    return f"t{number:03d}"


class PhaseState:
    """One phase's trials, rebuilt from the journal."""

    def __init__(self, phase: int) -> None:
        self.phase = phase
        self.trials: dict[int, TrialRecord] = {}
        self.closed: dict[str, Any] | None = None

    def apply(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "trial_started":
            number = event["trial"]
            record = self.trials.get(number)
            if record is None or not event.get("rerun"):
                self.trials[number] = TrialRecord(
                    phase=self.phase,
                    trial=number,
                    point=event["point"],
                    params=event["params"],
                    proposed=event.get("proposed", event["point"]),
                    loss=event.get("loss", ""),
                    optimizer=event.get("optimizer", ""),
                    ask=event.get("ask"),
                    worker=event.get("worker", ""),
                )
            else:
                record.status, record.worker, record.starts = "running", event.get("worker", ""), record.starts + 1
            self.closed = None
        elif kind == "trial_retried" and event["trial"] in self.trials:
            record = self.trials[event["trial"]]  # running with no live worker: the next worker claims it
            record.status, record.worker, record.epochs = "running", "", {}
            self.closed = None
        elif kind == "epoch_reported" and event["trial"] in self.trials:
            self.trials[event["trial"]].epochs[int(event["epoch"])] = event.get("value")
        elif kind in FINISHED and event["trial"] in self.trials:
            record = self.trials[event["trial"]]
            record.status = kind.removeprefix("trial_")
            record.value, record.raw = event["value"], event.get("raw")
            record.flagged, record.reason = bool(event.get("flagged")), event.get("reason", "")
            record.wall_s = float(event.get("wall_s", 0.0))
        elif kind == "phase_closed":
            self.closed = event

    def running(self) -> list[TrialRecord]:
        return [t for _, t in sorted(self.trials.items()) if t.status == "running"]

    def finished(self) -> list[TrialRecord]:
        return [t for _, t in sorted(self.trials.items()) if t.status != "running"]

    def counts(self) -> dict[str, int]:
        """Trials per status, in the order status tables and JSON list them."""
        return {s: sum(t.status == s for t in self.trials.values()) for s in STATUSES}

    def measured(self) -> list[TrialRecord]:
        """Completed trials with a real (unpenalised) objective."""
        return [t for t in self.finished() if t.status == "completed" and not t.flagged]

    def best(self) -> TrialRecord | None:
        measured = self.measured()
        return max(measured, key=lambda t: (t.value, -t.trial)) if measured else None

    def penalty(self) -> float:
        """A value worse than the worst measured one, so the optimizer steers away but stays finite."""
        values = [t.value for t in self.measured()]
        worst, best = (min(values), max(values)) if values else (0.0, 0.0)
        return worst - max(0.01, 0.1 * (best - worst))

    def next_number(self) -> int:
        return max(self.trials, default=0) + 1


class StudyState:
    def __init__(self) -> None:
        self.phases: dict[int, PhaseState] = {}

    def phase(self, number: int) -> PhaseState:
        return self.phases.setdefault(number, PhaseState(number))

    def apply(self, event: dict[str, Any]) -> None:
        self.phase(int(event["phase"])).apply(event)


def finite(value: Any) -> float | None:
    """A float objective, or None for missing/NaN/inf (which must never reach the optimizer)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class WorkerLease:
    """This worker's liveness lock: held while the worker runs, released by the kernel if it dies."""

    def __init__(self, root: Path) -> None:
        host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
        self.id = f"{host}-{os.getpid()}-{secrets.token_hex(3)}"
        self.path = root / WORKERS_DIR / f"{self.id}.lock"
        self._fd: int | None = None

    def __enter__(self) -> WorkerLease:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(self._fd, f"{socket.gethostname()} pid {os.getpid()} since {now()}\n".encode())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Study:
    """A study folder; `study.toml` freezes each phase's plan the first time the phase starts."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.journal = Journal(self.root)

    @property
    def config_path(self) -> Path:
        return self.root / STUDY_FILE

    def exists(self) -> bool:
        return self.config_path.is_file()

    def require(self) -> Study:
        if not self.exists():
            raise UsageError(
                f"{self.root}: no study here (no {STUDY_FILE}); start one with `clipctl tune --phase 1`"
                f"{'' if str(self.root) == 'runs/tune' else f' --study {self.root}'}"
            )
        return self

    def config(self) -> dict[str, Any]:
        return read_toml(self.config_path) if self.exists() else {}

    def frozen_phase(self, phase: int) -> dict[str, Any] | None:
        return self.config().get(f"phase{phase}")

    def frozen_phases(self) -> list[int]:
        return sorted(int(k.removeprefix("phase")) for k in self.config() if k.startswith("phase"))

    def freeze_phase(self, phase: int, frozen: dict[str, Any]) -> dict[str, Any]:
        """Record a phase's plan unless another worker froze it first; returns the plan on record."""
        with self.journal.locked():
            config = self.config()
            existing = config.get(f"phase{phase}")
            if existing is not None:
                return existing
            config.setdefault("study", {"version": STUDY_VERSION, "created": now()})
            config[f"phase{phase}"] = frozen
            atomic_write_text(self.config_path, tomli_w.dumps(config))
            return frozen

    def set_trial_budget(self, phase: int, n_trials: int) -> None:
        """Record a changed tune.n_trials (extending or shortening a phase is allowed; its space is not)."""
        with self.journal.locked():
            config = self.config()
            if config[f"phase{phase}"]["n_trials"] != n_trials:
                config[f"phase{phase}"]["n_trials"] = n_trials
                atomic_write_text(self.config_path, tomli_w.dumps(config))

    def phase_dir(self, phase: int) -> Path:
        return self.root / f"phase{phase}"

    def worker(self) -> WorkerLease:
        return WorkerLease(self.root)

    def worker_alive(self, worker_id: str) -> bool:
        path = self.root / WORKERS_DIR / f"{worker_id}.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing also drops a lock we just took
        path.unlink(missing_ok=True)
        return False

    def events(self) -> list[dict[str, Any]]:
        return self.journal.read(0)[0]

    def state(self) -> StudyState:
        state = StudyState()
        for event in self.events():
            state.apply(event)
        return state
