"""The study folder: `study.toml` (frozen phase plans, the storage it uses) beside an Optuna storage.

`study.toml` stays a file in the folder: it is the human-readable, diffable record of each phase's frozen
plan that `--recipe` edits are checked against, and the folder holds the trials' run directories anyway.
The trials themselves live in the Optuna storage (`clipctl.tune.storage`): by default Optuna's journal file
`optuna-journal.log` in the folder, or any RDB URL given with `--storage` when the study is created.
Replaying the storage (`PhaseState.from_attempts`) gives every trial's status without any optimizer.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from clipctl.atomic import atomic_write_text
from clipctl.console import info
from clipctl.errors import RunConflictError, UsageError
from clipctl.recipe import read_toml
from clipctl.tune.journal import JournalFile, replayable, rewrite
from clipctl.tune.migrate import OLD_JOURNAL, migrate, prepare, refuse
from clipctl.tune.storage import (
    FINISHED_STATES,
    SYS,
    Attempt,
    Heartbeat,
    PhaseStore,
    StudyLock,
    absolute_storage,
    latest,
    live_workers,
    open_storage,
    storage_label,
)

STUDY_FILE = "study.toml"
STUDY_VERSION = 2  # 1: the flock'd journal.jsonl of clipctl before Optuna storage
HEARTBEAT_S = 30.0
STATUSES = ("completed", "failed", "pruned", "running")  # a trial's status, in the order tables list them


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


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

    @classmethod
    def from_attempts(cls, phase: int, attempts: list[Attempt], closed: dict[str, Any] | None) -> PhaseState:
        """A trial is its first attempt's point and its last attempt's status: waiting, running, or untold
        (a dead worker's attempt failed by a heartbeat check) all count as running until re-run."""
        state = cls(phase)
        last_seq = 0
        for number, group in latest(attempts).items():
            first, last = group[0], group[-1]
            record = TrialRecord(
                phase=phase,
                trial=number,
                point=first.point,
                params=first.params,
                proposed=first.proposed,
                loss=first.loss,
                optimizer=first.optimizer,
                ask=first.ask,
                worker=last.worker,
                starts=sum(a.state.name != "WAITING" for a in group),
                epochs=dict(last.epochs),
            )
            if last.told:
                result = last.result
                record.status = FINISHED_STATES[last.state]
                record.value, record.raw = result.get("told"), result.get("raw")
                record.flagged, record.reason = bool(result.get("flagged")), str(result.get("reason", ""))
                record.wall_s = float(result.get("wall_s", 0.0))
            state.trials[number] = record
            last_seq = max(last_seq, last.start_seq)
        if closed is not None and closed.get("seq", 0) > last_seq:  # a later start (a retry) reopened it
            state.closed = closed
        return state

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


@dataclass
class JournalRepair:
    """What `Study.repair` did: the journal, operations kept, line numbers dropped, the original's copy."""

    path: Path
    kept: int
    dropped: list[int]
    backup: Path | None


class StudyState:
    def __init__(self) -> None:
        self.phases: dict[int, PhaseState] = {}

    def phase(self, number: int) -> PhaseState:
        return self.phases.setdefault(number, PhaseState(number))


def finite(value: Any) -> float | None:
    """A float objective, or None for missing/NaN/inf (which must never reach the optimizer)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class WorkerLease:
    """This worker's id and heartbeat on one phase: other workers re-run its trials once it stops beating."""

    def __init__(self, store: PhaseStore, interval_s: float) -> None:
        host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
        self.id = f"{host}-{os.getpid()}-{secrets.token_hex(3)}"
        self._heartbeat = Heartbeat(store, self.id, interval_s)

    def __enter__(self) -> WorkerLease:
        self._heartbeat.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._heartbeat.__exit__(*exc)


class Study:
    """A study folder; `study.toml` freezes each phase's plan the first time the phase starts and names the
    storage (`storage`: "" for the folder's journal file, else an RDB URL or a journal file path)."""

    def __init__(self, root: Path, storage: str | None = None, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.root = Path(root)
        self.requested = storage
        self.heartbeat_s = heartbeat_s
        self.lock = StudyLock(self.root)
        self._storage: Any = None

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
        """study.toml; a study of the old journal.jsonl format is migrated into the storage first."""
        config = read_toml(self.config_path) if self.exists() else {}
        if self._old_format(config):
            self._migrate()
            config = read_toml(self.config_path)
        return config

    def _old_format(self, config: dict[str, Any]) -> bool:
        if not config:
            return (self.root / OLD_JOURNAL).exists()
        return config.get("study", {}).get("version", 1) < STUDY_VERSION

    def _migrate(self) -> None:
        with self.lock.held():
            config = read_toml(self.config_path) if self.exists() else {}
            if not self._old_format(config):
                return  # another worker migrated it while we waited for the lock
            if not config:
                raise refuse(self.root, f"no {STUDY_FILE} beside it")
            phases = prepare(self.root, config)  # every refusal comes before the storage is touched
            spec = self._wanted() or ""
            self._storage = open_storage(spec, self.root, new=True)
            migrate(self.root, phases, self._storage)
            config["study"] = {
                **config.get("study", {}),
                "version": STUDY_VERSION,
                "storage": spec,
                "migrated_from": OLD_JOURNAL,
                "migrated": now(),
            }
            atomic_write_text(self.config_path, tomli_w.dumps(config))
        info(
            f"{self.root}: migrated the {OLD_JOURNAL} study into {storage_label(spec, self.root)} "
            f"({OLD_JOURNAL} is kept as it was)"
        )

    def _wanted(self) -> str | None:
        """--storage as it is recorded: journal file paths and SQLite files absolute, other URLs as given."""
        return None if self.requested is None else absolute_storage(self.requested)

    def _recorded(self) -> str | None:
        return self.config().get("study", {}).get("storage")

    def storage_spec(self) -> str:
        """The storage on record; a different --storage for an existing study is refused (a relative SQLite URL
        recorded by an older release counts as the same when it names the same file from here)."""
        recorded = self._recorded()
        wanted = self._wanted()
        if recorded is not None and wanted is not None and wanted not in (recorded, absolute_storage(recorded)):
            raise UsageError(
                f"--storage {self.requested}: study {self.root} keeps its trials in "
                f"{storage_label(recorded, self.root)}; drop --storage or pass that one"
            )
        return recorded if recorded is not None else (wanted or "")

    def open(self) -> Study:
        """Open the storage now (a bad URL, an unreachable server or a refused study fails here)."""
        _ = self.storage
        return self

    @property
    def storage(self) -> Any:
        if self._storage is None:
            spec = self.storage_spec()
            self._storage = open_storage(spec, self.root, new=self._recorded() is None)
        return self._storage

    def storage_label(self) -> str:
        """The argument for `optuna-dashboard` / `optuna.load_study(storage=...)`."""
        return storage_label(self.storage_spec(), self.root)

    def repair(self) -> JournalRepair:
        """Rewrite the study's journal from the lines that replay (`clipctl tune repair`); the original is kept.
        Workers keep read positions in the file, so a live one (a fresh heartbeat) refuses the repair."""
        spec = self.require().storage_spec()
        if "://" in spec:
            raise UsageError(
                f"{self.root}: its trials are in the database {spec}; `clipctl tune repair` mends journal files"
            )
        path = Path(storage_label(spec, self.root))
        if not path.is_file():
            return JournalRepair(path, 0, [], None)
        with self.lock.held(), JournalFile(path, "").locked():
            found = replayable(path)
            if not found.dropped:
                return JournalRepair(path, len(found.kept), [], None)
            if found.storage is not None and (live := live_workers(found.storage)):
                raise RunConflictError(
                    f"{path}: worker {live[0]} is still working on this study (its heartbeat is fresh); stop "
                    "the workers (or wait until a dead one's grace period has passed), then repair"
                )
            backup = rewrite(path, found.kept)
        return JournalRepair(path, len(found.kept), found.dropped, backup)

    def frozen_phase(self, phase: int) -> dict[str, Any] | None:
        return self.config().get(f"phase{phase}")

    def frozen_phases(self) -> list[int]:
        return sorted(int(k.removeprefix("phase")) for k in self.config() if k.startswith("phase"))

    def freeze_phase(self, phase: int, frozen: dict[str, Any]) -> dict[str, Any]:
        """Record a phase's plan unless another worker froze it first; returns the plan on record."""
        with self.lock.held():
            config = self.config()
            existing = config.get(f"phase{phase}")
            if existing is not None:
                return existing
            spec = self.storage_spec()
            study_id = self.phase_store(phase).study_id(create=True)  # a bad URL fails before study.toml is written
            for key, value in (
                ("clipctl_study", str(self.root.resolve())),
                ("objective", frozen["objective"]),
                ("strategy", frozen["strategy"]),
            ):  # for the dashboard; the plan is study.toml's
                self.storage.set_study_user_attr(study_id, key, value)
            config.setdefault("study", {"version": STUDY_VERSION, "created": now(), "storage": spec})
            config[f"phase{phase}"] = frozen
            atomic_write_text(self.config_path, tomli_w.dumps(config))
            return frozen

    def set_trial_budget(self, phase: int, n_trials: int) -> None:
        """Record a changed tune.n_trials (extending or shortening a phase is allowed; its space is not)."""
        with self.lock.held():
            config = self.config()
            if config[f"phase{phase}"]["n_trials"] != n_trials:
                config[f"phase{phase}"]["n_trials"] = n_trials
                atomic_write_text(self.config_path, tomli_w.dumps(config))

    def phase_dir(self, phase: int) -> Path:
        return self.root / f"phase{phase}"

    def phase_store(self, phase: int, space: Any = None) -> PhaseStore:
        return PhaseStore(self.storage, phase, space)

    def worker(self, phase: int) -> WorkerLease:
        return WorkerLease(self.phase_store(phase), self.heartbeat_s)

    def phase_state(self, phase: int) -> PhaseState:
        store = self.phase_store(phase)
        return PhaseState.from_attempts(phase, store.attempts(), store.attrs().get(SYS + "closed"))

    def state(self) -> StudyState:
        state = StudyState()
        for number in self.frozen_phases():
            state.phases[number] = self.phase_state(number)
        return state

    def events(self, phase: int = 1) -> list[dict[str, Any]]:
        """The phase as a timeline of events (started, retried, finished, closed) in decision order."""
        store = self.phase_store(phase)
        timeline: list[tuple[int, int, dict[str, Any]]] = []
        for number, group in latest(store.attempts()).items():
            for k, attempt in enumerate(group):
                base = {"phase": phase, "trial": number, "worker": attempt.worker}
                if k == 0:
                    timeline.append(
                        (
                            attempt.start_seq,
                            0,
                            {
                                **base,
                                "event": "trial_started",
                                "proposed": attempt.proposed,
                                "point": attempt.point,
                                "params": attempt.params,
                                "ask": attempt.ask,
                            },
                        )
                    )
                else:
                    if group[k - 1].told:
                        timeline.append((attempt.start_seq, 0, {**base, "event": "trial_retried", "worker": ""}))
                    if attempt.worker:
                        timeline.append((attempt.start_seq, 1, {**base, "event": "trial_started", "rerun": True}))
                if attempt.told:
                    kind = "trial_" + FINISHED_STATES[attempt.state]
                    timeline.append((attempt.tell_seq, 0, {**base, "event": kind, "value": attempt.result.get("told")}))
        closed = store.attrs().get(SYS + "closed")
        if closed is not None:
            timeline.append((closed["seq"], 0, {"event": "phase_closed", "phase": phase, **closed}))
        return [event for _, _, event in sorted(timeline, key=lambda item: item[:2])]
