"""A worker's live view of one phase: the Optuna storage replayed into the phase state and the optimizer.

Every decision (propose, claim an orphan, report an epoch, finish, close) takes the study lock, first reads
the storage (`sync`), then writes its own records stamped with the next sequence number. So the optimizer
calls made by all workers form one sequence, and a fresh process that replays the storage in sequence order
makes exactly the same calls: ask groups are re-asked with the same pending points, finished trials are told
their recorded value. The optimizer is never told NaN/inf: failures get `PhaseState.penalty()`.
A failed trial retried (`--retry-failed`) is not told its penalty on replay; its new result is told instead,
so asks recorded before the retry may replay differently (expected, and not warned about).
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from clipctl.console import percent
from clipctl.tune.phases import PhasePlan, phase_correlation
from clipctl.tune.space import same_point
from clipctl.tune.storage import SYS, Attempt, latest, optimizer_calls, running_at, uninterrupted
from clipctl.tune.store import PhaseState, Study, TrialRecord

# Median pruning needs this many completed trials with a value at the same epoch (fewer is noise).
MIN_PRUNE_REFERENCES = 3


class PhaseSession:
    def __init__(self, study: Study, plan: PhasePlan, worker_id: str) -> None:
        self.study, self.plan, self.worker = study, plan, worker_id
        self.store = study.phase_store(plan.phase, plan.space)
        self.search = plan.make_search()
        self.state = PhaseState(plan.phase)
        self._groups: dict[int, list[Attempt]] = {}
        self._attrs: dict[str, Any] = {}
        self._replayed = 0  # the last sequence number whose optimizer call this process has made
        self._asks = 0
        self._warned_divergence = False

    # ------------------------------------------------------------------ replay

    def sync(self) -> None:
        """Read the phase from the storage (the caller holds the study lock). Optimizer calls are only
        replayed in `_catch_up`, when a proposal needs them, so epoch reports never wait for a GP refit."""
        self._groups = latest(self.store.attempts())
        self._attrs = self.store.attrs()
        self.state = PhaseState.from_attempts(
            self.plan.phase, [a for g in self._groups.values() for a in g], self._attrs.get(SYS + "closed")
        )

    def _catch_up(self) -> None:
        """Replay the optimizer calls made since ours, in sequence order: asks with the points then pending."""
        retried = any(len(g) > 1 and any(a.told for a in g[:-1]) for g in self._groups.values())
        for seq, kind, attempts in optimizer_calls(self._groups):
            if seq <= self._replayed:
                continue
            if kind == "tell":
                self.search.tell(attempts[0].point, attempts[0].result["told"])
                continue
            replayed = self.search.ask(attempts[0].ask_size, running_at(self._groups, seq))
            recorded = [a.proposed for a in attempts]
            same = all(same_point(a, b) for a, b in zip(replayed, recorded))
            if not same and not self._warned_divergence and not retried:
                self._warned_divergence = True
                sys.stderr.write(
                    f"clipctl: warning: {self.study.storage_label()}: replaying phase {self.plan.phase} proposed other "
                    "points than the storage records (another scikit-optimize/numpy version?); continuing with the "
                    "recorded trials\n"
                )
        self._replayed = self._next_seq() - 1

    def _next_seq(self) -> int:
        seqs = [a.start_seq for g in self._groups.values() for a in g]
        seqs += [a.tell_seq for g in self._groups.values() for a in g if a.tell_seq is not None]
        closed = self._attrs.get(SYS + "closed")
        return max(seqs + [closed["seq"] if closed else 0]) + 1

    def _current(self, trial: int) -> Attempt:
        return self._groups[trial][-1]

    # ------------------------------------------------------------------ decisions

    def refresh(self) -> PhaseState:
        with self.study.lock.held():
            self.sync()
        return self.state

    def propose(self, n: int) -> list[TrialRecord]:
        """Up to n new trials (fewer once the phase's trial budget is handed out)."""
        with self.study.lock.held():
            self.sync()
            n = min(n, self.plan.planned_trials() - len(self.state.trials))
            if n <= 0:
                return []
            self._catch_up()
            proposed = self.search.ask(n, [t.point for t in self.state.running()])
            self._asks += 1
            ask_id, seq, first = f"{self.worker}#{self._asks}", self._next_seq(), self.state.next_number()
            with uninterrupted():
                for k, point in enumerate(proposed):
                    told, params = self.plan.canonicalise(point)
                    loss, optimizer = self.plan.names(params)
                    self.store.add_attempt(
                        first + k,
                        seq,
                        told,
                        {
                            "attempt": 1,
                            "worker": self.worker,
                            "loss": loss,
                            "optimizer": optimizer,
                            "run_params": params,
                        },
                        {"proposed": point, "ask": ask_id, "ask_index": k, "ask_size": n},
                    )
            self._replayed = seq
            self.sync()
            return [self.state.trials[first + k] for k in range(len(proposed))]

    def _new_attempt(self, trial: int, seq: int, worker: str, waiting: bool = False) -> None:
        """Another Optuna trial for a clipctl trial (Optuna never reopens a finished one)."""
        from optuna.trial import TrialState

        group = self._groups[trial]
        first = group[0]
        self.store.add_attempt(
            trial,
            seq,
            first.point,
            {
                "attempt": len(group) + 1,
                "worker": worker,
                "loss": first.loss,
                "optimizer": first.optimizer,
                "run_params": first.params,
            },
            {"proposed": first.proposed},
            state=TrialState.WAITING if waiting else TrialState.RUNNING,
        )

    def retry_failed(self) -> list[TrialRecord]:
        """Queue the phase's failed trials (runtime failures told a penalty) as waiting Optuna trials, which
        the next worker claims; their penalties are withdrawn from the search."""
        with self.study.lock.held():
            self.sync()
            failed = [t for t in self.state.finished() if t.status == "failed"]
            seq = self._next_seq()
            with uninterrupted():
                for record in failed:
                    self._new_attempt(record.trial, seq, "", waiting=True)
            return failed

    def claim_orphans(self, n: int) -> list[TrialRecord]:
        """Up to n trials whose worker stopped (signed off, or no heartbeat within its grace period), or that
        wait for a retry; a dead worker's attempt is marked failed, and the trial re-run (the trainer resumes)."""
        if n <= 0:
            return []
        with self.study.lock.held():
            self.sync()
            orphans = [
                t
                for t in self.state.running()
                if t.worker != self.worker and not self.store.worker_alive(self._attrs, t.worker)
            ]
            claimed = []
            for record in orphans[:n]:
                current = self._current(record.trial)
                if current.state.name == "WAITING":
                    if self.store.claim(current, self.worker):
                        claimed.append(record.trial)
                    continue
                if current.state.name == "RUNNING":
                    self.store.fail_stale(current, f"worker {current.worker} stopped; trial re-run by {self.worker}")
                self._new_attempt(record.trial, self._next_seq(), self.worker)
                claimed.append(record.trial)
            if claimed:
                self.sync()
            return [self.state.trials[number] for number in claimed]

    def others_running(self) -> bool:
        """Whether trials of other workers still run (they may die and leave an orphan to claim)."""
        return any(t.worker != self.worker for t in self.refresh().running())

    def report_epoch(self, trial: int, epoch: int, value: float | None) -> str:
        """Record a per-epoch objective; returns "continue", "pruned" (median rule) or "diverged" (NaN)."""
        with self.study.lock.held():
            self.sync()
            record = self.state.trials[trial]
            if record.status != "running" or record.worker != self.worker:
                return "continue"
            if epoch not in record.epochs or record.epochs[epoch] != value:
                self.store.report(self._current(trial), epoch, value)
                record.epochs[epoch] = value
            if value is None:
                return "diverged"
            if not self.plan.prune or len(record.epochs) <= self.plan.prune_grace_epochs:
                return "continue"
            references = [t.epochs[epoch] for t in self.state.measured() if t.epochs.get(epoch) is not None]
            if len(references) < MIN_PRUNE_REFERENCES:
                return "continue"
            median = statistics.median(references)
            if value >= median:
                return "continue"
            self._tell(
                trial,
                "pruned",
                {
                    "told": self.state.penalty(),
                    "raw": value,
                    "flagged": True,
                    "epoch": epoch,
                    "reason": f"epoch {epoch}: {percent(value)} < median {percent(median)} "
                    f"of {len(references)} completed trials",
                },
            )
            return "pruned"

    def finish(self, trial: int, raw: float | None, reason: str = "", wall_s: float = 0.0) -> TrialRecord | None:
        """A finished run: its objective if finite, else a flagged penalty. None if already recorded."""
        with self.study.lock.held():
            self.sync()
            record = self.state.trials[trial]
            if record.status != "running" or record.worker != self.worker:
                return None
            if raw is not None and not reason:
                self._tell(trial, "completed", {"told": raw, "raw": raw, "flagged": False, "wall_s": wall_s})
            else:
                self._tell(
                    trial,
                    "failed",
                    {
                        "told": self.state.penalty(),
                        "raw": raw,
                        "flagged": True,
                        "reason": reason or "no objective",
                        "wall_s": wall_s,
                    },
                )
            return self.state.trials[trial]

    def _tell(self, trial: int, status: str, result: dict[str, Any]) -> None:
        with uninterrupted():
            self.store.tell(self._current(trial), self._next_seq(), status, result)
        self.sync()
        self._maybe_close()

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
        self.store.set_attr("closed", {**fields, "worker": self.worker, "seq": self._next_seq()})
        self.sync()
