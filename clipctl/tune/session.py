"""A worker's live view of one phase: journal events replayed into the phase state and the optimizer.

Every decision (propose, claim an orphan, report an epoch, finish, close) takes the journal lock, first
applies the events other workers appended (`sync`), then appends its own. So the optimizer calls made by
all workers form one sequence, the journal's order, and a fresh process that replays the journal makes
exactly the same calls: ask groups are re-asked with the same pending points, finished trials are told
their recorded value. The optimizer is never told NaN/inf: failures get `PhaseState.penalty()`.
A failed trial retried (`--retry-failed`) is not told its penalty on replay; its new result is told instead,
so asks recorded before the retry may replay differently (expected, and not warned about).
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from clipctl.tune.phases import PhasePlan, phase_correlation
from clipctl.tune.space import same_point
from clipctl.tune.store import FINISHED, PhaseState, Study, TrialRecord, now

# Median pruning needs this many completed trials with a value at the same epoch (fewer is noise).
MIN_PRUNE_REFERENCES = 3


class PhaseSession:
    def __init__(self, study: Study, plan: PhasePlan, worker_id: str) -> None:
        self.study, self.plan, self.worker = study, plan, worker_id
        self.search = plan.make_search()
        self.state = PhaseState(plan.phase)
        self._offset = 0
        self._asks = 0
        self._queue: list[tuple[Any, ...]] = []  # optimizer calls not yet replayed, in journal order
        self._warned_divergence = False
        self._retried = False  # a retry rewrote the history of tells: earlier asks may replay differently

    # ------------------------------------------------------------------ replay

    def sync(self) -> None:
        """Apply events appended since the last sync to the phase state (the caller holds the journal
        lock). Optimizer calls are only queued: GP refits run in `_catch_up`, when a proposal needs them,
        so epoch reports and results never hold the lock for a refit."""
        events, self._offset = self.study.journal.read(self._offset)
        events = [e for e in events if int(e.get("phase", 0)) == self.plan.phase]
        i = 0
        while i < len(events):
            event = events[i]
            if event["event"] == "trial_started" and event.get("ask") and not event.get("rerun"):
                group = [event]
                while i + len(group) < len(events) and events[i + len(group)].get("ask") == event["ask"]:
                    group.append(events[i + len(group)])
                self._queue.append(("ask", self._pending(), group))
                for e in group:
                    self._apply(e)
                i += len(group)
            else:
                self._apply(event)
                i += 1

    def _catch_up(self) -> None:
        """Replay the queued optimizer calls in journal order: asks with the pending points they had."""
        for op in self._queue:
            if op[0] == "tell":
                self.search.tell(op[1], op[2])
                continue
            _, pending, group = op
            replayed = self.search.ask(len(group), pending)
            recorded = [e.get("proposed", e["point"]) for e in group]
            same = len(replayed) == len(recorded) and all(same_point(a, b) for a, b in zip(replayed, recorded))
            if not same and not self._warned_divergence and not self._retried:
                self._warned_divergence = True
                sys.stderr.write(
                    f"clipctl: warning: {self.study.journal.path}: replaying phase {self.plan.phase} proposed other "
                    "points than the journal records (another scikit-optimize/numpy version?); continuing with the "
                    "journal's trials\n"
                )
        self._queue.clear()

    def _apply(self, event: dict[str, Any]) -> None:
        self.state.apply(event)
        if event["event"] in FINISHED:
            record = self.state.trials.get(event["trial"])
            if record is not None:
                self._queue.append(("tell", record.point, event["value"], record.trial))
        elif event["event"] == "trial_retried":
            self._retried = True
            self._queue = [op for op in self._queue if not (op[0] == "tell" and op[3] == event["trial"])]

    def _pending(self) -> list[dict[str, Any]]:
        return [t.point for t in self.state.running()]

    def _write(self, events: list[dict[str, Any]]) -> None:
        """Append our own events and apply them (the caller holds the lock and has just synced)."""
        self.study.journal.append(events)
        _, self._offset = self.study.journal.read(self._offset)
        for event in events:
            self._apply(event)

    def _event(self, kind: str, trial: int, **fields: Any) -> dict[str, Any]:
        return {"event": kind, "phase": self.plan.phase, "trial": trial, "worker": self.worker, "time": now(), **fields}

    # ------------------------------------------------------------------ decisions

    def refresh(self) -> PhaseState:
        with self.study.journal.locked():
            self.sync()
        return self.state

    def propose(self, n: int) -> list[TrialRecord]:
        """Up to n new trials (fewer once the phase's trial budget is handed out)."""
        with self.study.journal.locked():
            self.sync()
            n = min(n, self.plan.planned_trials() - len(self.state.trials))
            if n <= 0:
                return []
            self._catch_up()
            proposed = self.search.ask(n, self._pending())
            self._asks += 1
            ask_id = f"{self.worker}#{self._asks}"
            first = self.state.next_number()
            events = []
            for k, point in enumerate(proposed):
                told, params = self.plan.canonicalise(point)
                loss, optimizer = self.plan.names(params)
                events.append(
                    self._event(
                        "trial_started",
                        first + k,
                        ask=ask_id,
                        proposed=point,
                        point=told,
                        params=params,
                        loss=loss,
                        optimizer=optimizer,
                    )
                )
            self._write(events)
            return [self.state.trials[e["trial"]] for e in events]

    def retry_failed(self) -> list[TrialRecord]:
        """Mark the phase's failed trials (runtime failures told a penalty) to be run again by the next worker."""
        with self.study.journal.locked():
            self.sync()
            failed = [t for t in self.state.finished() if t.status == "failed"]
            if failed:
                self._write([self._event("trial_retried", t.trial) for t in failed])
            return failed

    def claim_orphans(self, n: int) -> list[TrialRecord]:
        """Up to n trials whose worker died mid-run; they are re-run (the trainer resumes their state)."""
        if n <= 0:
            return []
        with self.study.journal.locked():
            self.sync()
            orphans = [
                t for t in self.state.running() if t.worker != self.worker and not self.study.worker_alive(t.worker)
            ]
            events = [self._event("trial_started", t.trial, rerun=True, previous_worker=t.worker) for t in orphans[:n]]
            if events:
                self._write(events)
            return [self.state.trials[e["trial"]] for e in events]

    def report_epoch(self, trial: int, epoch: int, value: float | None) -> str:
        """Record a per-epoch objective; returns "continue", "pruned" (median rule) or "diverged" (NaN)."""
        with self.study.journal.locked():
            self.sync()
            record = self.state.trials[trial]
            if record.status != "running" or record.worker != self.worker:
                return "continue"
            if epoch not in record.epochs or record.epochs[epoch] != value:
                self._write([self._event("epoch_reported", trial, epoch=epoch, value=value)])
            if value is None:
                return "diverged"
            if not self.plan.prune or len(record.epochs) <= self.plan.prune_grace_epochs:
                return "continue"
            measured = self.state.measured()
            references = [t.epochs[epoch] for t in measured if t.epochs.get(epoch) is not None]
            if len(references) < MIN_PRUNE_REFERENCES:
                return "continue"
            median = statistics.median(references)
            if value >= median:
                return "continue"
            self._write(
                [
                    self._event(
                        "trial_pruned",
                        trial,
                        value=self.state.penalty(),
                        raw=value,
                        flagged=True,
                        epoch=epoch,
                        reason=(
                            f"epoch {epoch}: {value:.4g} < median {median:.4g} of {len(references)} completed trials"
                        ),
                    )
                ]
            )
            self._maybe_close()
            return "pruned"

    def finish(self, trial: int, raw: float | None, reason: str = "", wall_s: float = 0.0) -> TrialRecord | None:
        """A finished run: its objective if finite, else a flagged penalty. None if already recorded."""
        with self.study.journal.locked():
            self.sync()
            record = self.state.trials[trial]
            if record.status != "running" or record.worker != self.worker:
                return None
            if raw is not None and not reason:
                event = self._event("trial_completed", trial, value=raw, raw=raw, flagged=False, wall_s=wall_s)
            else:
                event = self._event(
                    "trial_failed",
                    trial,
                    value=self.state.penalty(),
                    raw=raw,
                    flagged=True,
                    reason=reason or "no objective",
                    wall_s=wall_s,
                )
            self._write([event])
            self._maybe_close()
            return record

    def _maybe_close(self) -> None:
        state = self.state
        if state.closed is not None or state.running() or len(state.trials) < self.plan.planned_trials():
            return
        best = state.best()
        counts = state.counts()
        del counts["running"]  # none: the phase closes only when every trial has finished
        fields: dict[str, Any] = {"trials": len(state.trials), **counts}
        if best is not None:
            fields.update(best_trial=best.trial, best_value=best.value)
        if self.plan.handover.get("kind") == "top_k":
            correlation = phase_correlation(self.study.state(), self.plan.handover["from_phase"], self.plan.phase)
            if correlation is not None:
                fields["correlation"] = {k: correlation[k] for k in ("first", "second", "n", "rho", "p")}
        self._write(
            [{"event": "phase_closed", "phase": self.plan.phase, "worker": self.worker, "time": now(), **fields}]
        )
