"""Studies of the old format (`journal.jsonl` under flock) are read once and written into the Optuna storage.

The old events are replayed in journal order into attempts (one per start of a trial) stamped with the
event's position as sequence number, which is the order the optimizer calls were made in: the migrated
study replays to the same next proposal. `journal.jsonl` is kept as it was; `study.toml` records the
migration. A study an old clipctl worker is still writing to, or whose journal does not replay, is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from clipctl.errors import UsageError
from clipctl.tune.space import SearchSpace
from clipctl.tune.storage import PhaseStore

OLD_JOURNAL = "journal.jsonl"
OLD_STATES = {
    "trial_completed": TrialState.COMPLETE,
    "trial_failed": TrialState.FAIL,
    "trial_pruned": TrialState.PRUNED,
}


@dataclass
class _Draft:
    """An attempt being rebuilt from old events."""

    trial: int
    seq: int
    first: dict[str, Any]
    worker: str
    state: TrialState = TrialState.RUNNING
    is_first: bool = False
    system: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    epochs: dict[int, float | None] = field(default_factory=dict)


def refuse(root: Path, why: str) -> UsageError:
    return UsageError(
        f"{root}: cannot migrate the old {OLD_JOURNAL} study ({why}); finish it with the clipctl "
        "release that started it, or start a new study with --study NEW_DIR (its files are left as they are)"
    )


def old_worker_running(root: Path) -> bool:
    """An old clipctl worker holds a flock on its file under workers/ while it runs."""
    for lease in (root / "workers").glob("*.lock"):
        try:
            fd = os.open(lease, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
    return False


def read_events(root: Path) -> list[dict[str, Any]]:
    """The old journal's events; none if the old study never got past its preflight (no journal yet)."""
    if not (root / OLD_JOURNAL).exists():
        return []
    events = []
    for number, line in enumerate((root / OLD_JOURNAL).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            raise refuse(root, f"line {number} is not JSON") from None
        if (
            not isinstance(event, dict)
            or not isinstance(event.get("phase"), int)
            or (event.get("event") != "phase_closed" and not isinstance(event.get("trial"), int))
        ):
            raise refuse(root, f"line {number} is not a journal event")
        events.append(event)
    return events


def replay(root: Path, events: list[dict[str, Any]]) -> tuple[list[_Draft], dict[str, Any] | None]:
    """One phase's events (with their journal positions as sequence numbers) as attempts."""
    drafts: dict[int, list[_Draft]] = {}
    closed = None
    for seq, event in events:
        kind, number = event["event"], event.get("trial")
        current = drafts[number][-1] if number in drafts else None
        if kind == "trial_started" and not event.get("rerun"):
            if not isinstance(event.get("point"), dict) or not isinstance(event.get("params"), dict):
                raise refuse(root, f"trial {number} starts without its point")
            drafts[number] = [_Draft(number, seq, event, str(event.get("worker", "")), is_first=True)]
        elif current is None:
            continue
        elif kind == "trial_started" and current.state == TrialState.WAITING:
            current.state, current.worker = TrialState.RUNNING, str(event.get("worker", ""))
        elif kind == "trial_started":
            if current.state == TrialState.RUNNING:
                current.state, current.result["reason"] = TrialState.FAIL, "worker stopped; trial re-run"
            drafts[number].append(_Draft(number, seq, current.first, str(event.get("worker", ""))))
        elif kind == "trial_retried":
            drafts[number].append(_Draft(number, seq, current.first, "", TrialState.WAITING))
        elif kind == "epoch_reported" and current.state == TrialState.RUNNING:
            current.epochs[int(event["epoch"])] = event.get("value")
        elif kind in OLD_STATES and current.state == TrialState.RUNNING:
            current.state, current.system["tell_seq"] = OLD_STATES[kind], seq
            current.result = {
                "told": event["value"],
                "raw": event.get("raw"),
                "flagged": bool(event.get("flagged")),
                "reason": event.get("reason", ""),
                "wall_s": float(event.get("wall_s", 0.0)),
            }
        if kind == "phase_closed":
            closed = {k: v for k, v in event.items() if k not in ("event", "phase", "time")} | {"seq": seq}
    return [d for group in drafts.values() for d in group], closed


def write_phase(store: PhaseStore, drafts: list[_Draft], closed: dict[str, Any] | None) -> None:
    """Write the attempts as Optuna trials (each one record) and the phase's close record."""
    groups: dict[int, int] = {}
    asks: dict[str, list[_Draft]] = {}
    for draft in drafts:
        if draft.is_first and draft.first.get("ask"):
            asks.setdefault(draft.first["ask"], []).append(draft)
    for members in asks.values():
        for k, draft in enumerate(members):
            draft.system.update(ask=draft.first["ask"], ask_index=k, ask_size=len(members))
    for draft in drafts:
        groups[draft.trial] = groups.get(draft.trial, 0) + 1
        first = draft.first
        store.add_attempt(
            draft.trial,
            draft.seq,
            first["point"],
            {
                "attempt": groups[draft.trial],
                "worker": draft.worker,
                "loss": first.get("loss", ""),
                "optimizer": first.get("optimizer", ""),
                "run_params": first["params"],
                **draft.result,
            },
            {"proposed": first.get("proposed", first["point"]), **draft.system},
            state=draft.state,
            epochs=draft.epochs,
        )
    if closed is not None:
        store.set_attr("closed", closed)


@dataclass
class PhaseMigration:
    """One phase of an old study, replayed and ready to write."""

    phase: int
    space: SearchSpace
    drafts: list[_Draft]
    closed: dict[str, Any] | None


def prepare(root: Path, config: dict[str, Any]) -> list[PhaseMigration]:
    """Read and replay every phase of the old journal; a refusal here happens before anything is written."""
    if old_worker_running(root):
        raise refuse(root, "an old clipctl worker is still running on it; let it finish first")
    events = list(enumerate(read_events(root), 1))
    phases = []
    for key in [k for k in config if k.startswith("phase")]:
        phase = int(key.removeprefix("phase"))
        try:
            space = SearchSpace.from_toml(config[key]["space"], f"study.toml {key}")
            drafts, closed = replay(root, [(s, e) for s, e in events if e["phase"] == phase])
            for draft in drafts:
                if outside := sorted(set(draft.first["point"]) - set(space.names)):
                    raise refuse(root, f"phase {phase} trial {draft.trial}: {outside} not in the phase's space")
        except (KeyError, ValueError, TypeError, UsageError) as err:
            if isinstance(err, UsageError) and "cannot migrate" in str(err):
                raise
            raise refuse(root, f"phase {phase}: {type(err).__name__}: {err}") from None
        phases.append(PhaseMigration(phase, space, drafts, closed))
    return phases


def migrate(root: Path, phases: list[PhaseMigration], storage: Any) -> None:
    """Write the prepared phases into `storage` (a phase study left by a migration cut short is replaced).
    The caller holds the study lock and records the migration in study.toml afterwards."""
    for migration in phases:
        try:
            store = PhaseStore(storage, migration.phase, migration.space)
            if store.study_id() is not None:
                storage.delete_study(store.study_id())
                store = PhaseStore(storage, migration.phase, migration.space)
            write_phase(store, migration.drafts, migration.closed)
        except (KeyError, ValueError, TypeError, optuna.exceptions.OptunaError) as err:
            raise refuse(root, f"phase {migration.phase}: {type(err).__name__}: {err}") from None
