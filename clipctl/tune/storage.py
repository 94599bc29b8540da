"""A study's trials in an Optuna storage; scikit-optimize still proposes every point.

One Optuna study per clipctl phase (`phase1`, ...), direction maximise. One Optuna trial per *attempt* of a
clipctl trial: a re-run (orphan, `--retry-failed`) is a new Optuna trial with the same `trial` user attr,
because Optuna never reopens a finished trial. Each attempt holds:

- params: the point told to the optimizer (canonicalised), with Optuna distributions of the space;
- user attrs (what the dashboard shows): `trial`, `attempt`, `worker`, `loss`, `optimizer`, `run_params`,
  and once told `told` (the value told, a penalty for a failure), `raw`, `flagged`, `reason`, `wall_s`;
- system attrs (the replay): `clipctl:proposed` (skopt's own point), `clipctl:ask`, `clipctl:ask_index`,
  `clipctl:ask_size`, `clipctl:start_seq`, `clipctl:tell_seq`, and `clipctl:stale` on a dead worker's attempt
  (whatever part of a result it wrote before it died is not a result).

Sequence numbers give the one order in which all workers' optimizer calls happened: every decision is taken
under the study lock (`StudyLock`) after reading the storage, and stamped with the next number. A tell counts
once the attempt's state is finished (the state is written last, so a half-written result is no result).
Worker heartbeats are study system attrs `clipctl:worker:<id>` (the journal backend of Optuna 5.0 has no
trial heartbeat); the phase's close record is `clipctl:closed`.
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileOpenLock
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError

from clipctl.errors import ClipctlError, StorageError, UsageError, os_error_message
from clipctl.tune.journal import CheckedJournalStorage, JournalFile
from clipctl.tune.space import CatDim, IntDim, RealDim, SearchSpace

JOURNAL_NAME = "optuna-journal.log"
LOCK_GRACE_S = 30  # a lock file untouched this long belongs to a dead worker; a live holder touches it
SYS = "clipctl:"
FINISHED_STATES = {TrialState.COMPLETE: "completed", TrialState.FAIL: "failed", TrialState.PRUNED: "pruned"}
RDB_TRIES = 8  # opening a new database while other workers create its tables
STORAGE_ERRORS = (OSError, SQLAlchemyError)  # what a storage raises when the disk or the database fails


def storage_label(spec: str, root: Path) -> str:
    """What `optuna-dashboard` and `optuna.load_study` take: the URL, or the journal file's path."""
    return spec if "://" in spec else str(root / (spec or JOURNAL_NAME))


def absolute_storage(spec: str) -> str:
    """--storage as a study records it: a journal path or an SQLite file absolute (resolved against the current
    folder, as typed), so every later command finds the same storage from any folder; other URLs as given."""
    if "://" not in spec:
        return str(Path(spec).resolve())
    if not spec.startswith("sqlite"):
        return spec
    try:
        url = make_url(spec)
    except ArgumentError:
        return spec  # opening it says what is wrong
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:") or Path(database).is_absolute():
        return spec
    return url.set(database=str(Path(database).resolve())).render_as_string(hide_password=False)


def open_storage(spec: str, root: Path, new: bool = False) -> BaseStorage:
    """An RDB URL (`sqlite:///…`, `postgresql://…`) or a journal file ("" = STUDY/optuna-journal.log).
    `new`: the study does not record this storage yet, so a file that is not a journal is refused."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if "://" in spec:
        return _open_rdb(spec)
    path = root / (spec or JOURNAL_NAME)
    if path.is_dir():
        raise UsageError(
            f"--storage {path}: is a folder; pass a journal file (e.g. {path / JOURNAL_NAME}) or an RDB URL "
            "(sqlite:///ABS/PATH.db)"
        )
    journal = JournalFile(path, repair_hint=f"clipctl tune repair --study {root}")
    if new and journal.foreign():
        raise UsageError(
            f"--storage {path}: not an Optuna journal file (no line of it is a journal operation); pass a new "
            "file or an RDB URL, the file is left as it is"
        )
    return CheckedJournalStorage(journal)


def _schema_race(err: Exception) -> bool:
    """Workers creating a new database's tables at the same time: a duplicate table or version row."""
    text = str(err).lower()
    return isinstance(err, IntegrityError) or (
        isinstance(err, DBAPIError) and any(hint in text for hint in ("already exists", "duplicate", "locked"))
    )


def _open_rdb(spec: str) -> RDBStorage:
    """Optuna's RDB storage; the schema race of workers starting together on a new database is retried."""
    engine = {"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else {}
    attempt = 0
    while True:
        try:
            return RDBStorage(spec, engine_kwargs=engine)
        except Exception as err:  # noqa: BLE001 - SQLAlchemy raises a dozen types for a bad URL or server
            attempt += 1
            if attempt < RDB_TRIES and _schema_race(err):
                time.sleep(random.uniform(0.05, 0.2) * attempt)  # meanwhile the other worker finishes the schema
                continue
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UsageError(
                f"--storage {spec}: cannot open it ({first[:200]}); expected sqlite:///PATH, "
                "postgresql://USER@HOST/DB, mysql://USER@HOST/DB or a journal file path"
            ) from None


def storage_failure(err: Exception, label: str) -> StorageError:
    """A storage that failed under a running study (disk full, read-only, the database gone), as one line."""
    if isinstance(err, OSError):
        # the study is resumed in place, so the fix is never "another --out" (tune has --study)
        return StorageError(f"{os_error_message(err, then='run the same command')}; the study stopped")
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return StorageError(
        f"{label}: the study's storage failed ({first[:200]}); the study stopped "
        "(run the same command once the storage is back: running trials are re-run)"
    )


class StudyLock:
    """Serialises a study's decisions across workers with Optuna's O_EXCL lock file (NFS-safe, unlike flock).
    Re-entrant; while held a thread touches the file, so only a dead holder's lock is ever broken."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._depth = 0
        self._lock: JournalFileOpenLock | None = None
        self._stop = threading.Event()
        self._keeper = threading.Thread()

    @contextmanager
    def held(self) -> Iterator[None]:
        if self._depth == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock = JournalFileOpenLock(str(self.root / "study"), grace_period=LOCK_GRACE_S)
            self._lock.acquire()
            self._stop.clear()
            self._keeper = threading.Thread(target=self._keep_fresh, daemon=True)
            self._keeper.start()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._lock is not None:
                self._stop.set()
                self._keeper.join()  # never touch the file after it is released
                try:
                    self._lock.release()
                except RuntimeError:  # broken by another worker after we stalled past the grace period
                    pass
                self._lock = None

    def _keep_fresh(self) -> None:
        path = self.root / "study.lock"
        while not self._stop.wait(LOCK_GRACE_S / 5):
            try:
                os.utime(path)  # never creates it: a lock broken meanwhile stays broken
            except OSError:
                return


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until a batch of writes is done, so a batch is never half recorded."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """The space as Optuna distributions, so the dashboard plots params on their own scales."""
    out: dict[str, BaseDistribution] = {}
    for dim in space.dims:
        if isinstance(dim, RealDim):
            out[dim.name] = FloatDistribution(dim.low, dim.high, log=dim.log)
        elif isinstance(dim, IntDim):
            out[dim.name] = IntDistribution(dim.low, dim.high)
        elif isinstance(dim, CatDim):
            out[dim.name] = CategoricalDistribution(list(dim.categories))
    return out


@dataclass
class Attempt:
    """One Optuna trial, decoded."""

    id: int
    trial: int
    state: TrialState
    worker: str
    start_seq: int
    point: dict[str, Any]
    proposed: dict[str, Any]
    params: dict[str, Any]
    loss: str = ""
    optimizer: str = ""
    ask: str | None = None
    ask_index: int = 0
    ask_size: int = 1
    tell_seq: int | None = None
    result: dict[str, Any] = field(default_factory=dict)
    epochs: dict[int, float | None] = field(default_factory=dict)

    @property
    def told(self) -> bool:
        return self.state.is_finished() and self.tell_seq is not None


def decode(frozen: FrozenTrial) -> Attempt | None:
    """An Optuna trial written by clipctl, or None for anything else in the study. The dicts are copied:
    the journal storage hands out its own trials (`deepcopy=False`)."""
    user, system = frozen.user_attrs, frozen.system_attrs
    if not isinstance(user.get("trial"), int) or not isinstance(system.get(SYS + "start_seq"), int):
        return None
    tell_seq = None if system.get(SYS + "stale") else system.get(SYS + "tell_seq")
    return Attempt(
        id=frozen._trial_id,
        trial=user["trial"],
        state=frozen.state,
        worker=str(user.get("worker", "")),
        start_seq=system[SYS + "start_seq"],
        point=dict(frozen.params),
        proposed=dict(system.get(SYS + "proposed", frozen.params)),
        params=dict(user.get("run_params", {})),
        loss=user.get("loss", ""),
        optimizer=user.get("optimizer", ""),
        ask=system.get(SYS + "ask"),
        ask_index=system.get(SYS + "ask_index", 0),
        ask_size=system.get(SYS + "ask_size", 1),
        tell_seq=tell_seq if isinstance(tell_seq, int) else None,
        result={k: user[k] for k in ("told", "raw", "flagged", "reason", "wall_s") if k in user},
        epochs={int(k): (v if math.isfinite(v) else None) for k, v in frozen.intermediate_values.items()},
    )


def latest(attempts: list[Attempt]) -> dict[int, list[Attempt]]:
    """Attempts per clipctl trial, oldest first (the last one is the trial's current attempt)."""
    groups: dict[int, list[Attempt]] = defaultdict(list)
    for attempt in sorted(attempts, key=lambda a: (a.start_seq, a.id)):
        groups[attempt.trial].append(attempt)
    return dict(sorted(groups.items()))


def running_at(groups: dict[int, list[Attempt]], seq: int) -> list[dict[str, Any]]:
    """The points that were pending (started, not told) just before decision `seq`, by trial number."""
    pending = []
    for group in groups.values():
        before = [a for a in group if a.start_seq < seq]
        if before and not (before[-1].told and before[-1].tell_seq < seq):
            pending.append(group[0].point)
    return pending


def optimizer_calls(groups: dict[int, list[Attempt]]) -> list[tuple[int, str, list[Attempt]]]:
    """(seq, "ask" | "tell", attempts) in decision order. A tell superseded by a retry is not replayed."""
    calls: list[tuple[int, str, list[Attempt]]] = []
    asks: dict[str, list[Attempt]] = defaultdict(list)
    for group in groups.values():
        if group[0].ask:
            asks[group[0].ask].append(group[0])
        if group[-1].told:
            calls.append((group[-1].tell_seq, "tell", [group[-1]]))
    calls += [(members[0].start_seq, "ask", sorted(members, key=lambda a: a.ask_index)) for members in asks.values()]
    return sorted(calls, key=lambda call: call[0])


class PhaseStore:
    """One phase's Optuna study: reads decoded attempts, writes attempts, results and heartbeats."""

    def __init__(self, storage: BaseStorage, phase: int, space: SearchSpace | None = None) -> None:
        self.storage, self.phase, self.name = storage, phase, f"phase{phase}"
        self.dists = distributions(space) if space is not None else {}
        self._id: int | None = None

    def study_id(self, create: bool = False) -> int | None:
        if self._id is None:
            try:
                self._id = self.storage.get_study_id_from_name(self.name)
            except KeyError:
                if not create:
                    return None
                try:
                    self._id = self.storage.create_new_study([StudyDirection.MAXIMIZE], self.name)
                except optuna.exceptions.DuplicatedStudyError:
                    self._id = self.storage.get_study_id_from_name(self.name)
        return self._id

    def attempts(self) -> list[Attempt]:
        study = self.study_id()
        if study is None:
            return []
        decoded = (decode(t) for t in self.storage.get_all_trials(study, deepcopy=False))
        return [a for a in decoded if a is not None]

    def attrs(self) -> dict[str, Any]:
        study = self.study_id()
        return {} if study is None else self.storage.get_study_system_attrs(study)

    def set_attr(self, key: str, value: Any) -> None:
        self.storage.set_study_system_attr(self.study_id(create=True), SYS + key, value)

    def add_attempt(
        self,
        trial: int,
        seq: int,
        point: dict[str, Any],
        user: dict[str, Any],
        system: dict[str, Any],
        state: TrialState = TrialState.RUNNING,
        epochs: dict[int, float | None] | None = None,
    ) -> None:
        """A new Optuna trial for clipctl trial `trial`, written as one record (a migration writes finished ones)."""
        stamp = datetime.now(timezone.utc)
        template = FrozenTrial(
            number=-1,
            state=state,
            value=user["raw"] if state == TrialState.COMPLETE else None,
            datetime_start=stamp,
            datetime_complete=stamp if state.is_finished() else None,
            params=point,
            distributions={k: self.dists[k] for k in point},
            user_attrs={"trial": trial, **user},
            system_attrs={SYS + "start_seq": seq, **{SYS + k: v for k, v in system.items()}},
            intermediate_values={k: math.nan if v is None else v for k, v in (epochs or {}).items()},
            trial_id=-1,
        )
        self.storage.create_new_trial(self.study_id(create=True), template_trial=template)

    def claim(self, attempt: Attempt, worker: str) -> bool:
        """Take a waiting attempt (a retried trial); False if another worker took it first."""
        try:
            if not self.storage.set_trial_state_values(attempt.id, TrialState.RUNNING):
                return False
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        self.storage.set_trial_user_attr(attempt.id, "worker", worker)
        return True

    def fail_stale(self, attempt: Attempt, reason: str) -> None:
        """Mark a dead worker's running attempt failed and untold (the trial itself is re-run): `stale` tells a
        reader to ignore a result the worker was killed while recording (everything but the state written)."""
        try:
            self.storage.set_trial_user_attr(attempt.id, "reason", reason)
            self.storage.set_trial_system_attr(attempt.id, SYS + "stale", True)
            self.storage.set_trial_state_values(attempt.id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    def report(self, attempt: Attempt, epoch: int, value: float | None) -> None:
        self.storage.set_trial_intermediate_value(attempt.id, epoch, math.nan if value is None else value)

    def tell(self, attempt: Attempt, seq: int, status: str, result: dict[str, Any]) -> None:
        """Record a result; the state is written last, so a result cut short by a kill is no result."""
        for key, value in result.items():
            self.storage.set_trial_user_attr(attempt.id, key, value)
        self.storage.set_trial_system_attr(attempt.id, SYS + "tell_seq", seq)
        state = {v: k for k, v in FINISHED_STATES.items()}[status]
        values = [result["raw"]] if state == TrialState.COMPLETE else None
        self.storage.set_trial_state_values(attempt.id, state, values=values)

    # ------------------------------------------------------------------ worker heartbeats

    def beat(self, worker: str, grace_s: float, stopped: bool = False) -> None:
        self.set_attr(f"worker:{worker}", {"time": time.time(), "grace_s": grace_s, "stopped": stopped})

    def worker_alive(self, attrs: dict[str, Any], worker: str) -> bool:
        return heartbeat_alive(attrs.get(f"{SYS}worker:{worker}"))


def heartbeat_alive(record: Any) -> bool:
    """Alive: a heartbeat younger than the grace period that worker declared, and not signed off."""
    if not isinstance(record, dict) or record.get("stopped"):
        return False
    return time.time() - float(record.get("time", 0)) <= float(record.get("grace_s", 0))


def live_workers(storage: BaseStorage) -> list[str]:
    """The workers of any phase whose heartbeat is alive."""
    prefix = f"{SYS}worker:"
    return sorted(
        key.removeprefix(prefix)
        for study in storage.get_all_studies()
        for key, record in study.system_attrs.items()
        if key.startswith(prefix) and heartbeat_alive(record)
    )


class Heartbeat:
    """A worker's liveness in the storage: a beat every `interval_s` from a thread, a sign-off at exit.
    Readers declare the worker dead `4 * interval_s` after its last beat (clocks are assumed in step)."""

    def __init__(self, store: PhaseStore, worker: str, interval_s: float) -> None:
        self.store, self.worker, self.interval_s = store, worker, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Heartbeat:
        self.store.beat(self.worker, 4 * self.interval_s)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.store.beat(self.worker, 4 * self.interval_s)
            except Exception:  # noqa: BLE001 - a storage hiccup; the next beat retries, a long one makes us stale
                continue

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)
        try:
            self.store.beat(self.worker, 4 * self.interval_s, stopped=True)
        except (*STORAGE_ERRORS, ClipctlError):  # the storage failed: the error on its way out says so, and the
            pass  # beat goes stale, so other workers re-run this worker's trials after its grace period
