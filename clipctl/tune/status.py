"""What a study holds, as plain data for `clipctl tune status | best` and for scripts: each phase's
counts, best trial and lineage, and the best trial written out as a runnable recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipctl.atomic import atomic_write_text
from clipctl.console import percent
from clipctl.errors import UsageError
from clipctl.tune.phases import PhasePlan, load_plan, phase_correlation
from clipctl.tune.store import Study, StudyState, TrialRecord


def lineage(handover: dict[str, Any]) -> str:
    """Where a phase's search came from, in words ("-" for a phase that starts from scratch)."""
    if handover.get("kind") == "top_k":
        combos = ", ".join(f"{loss}+{opt}" for loss, opt, _ in handover["combos"])
        return f"top-{len(handover['combos'])} of phase {handover['from_phase']}: {combos}"
    if handover.get("kind") == "best":
        return f"from phase {handover['from_phase']} t{handover['trial']:03d} ({percent(handover['value'])})"
    return "-"


def trial_json(t: TrialRecord) -> dict[str, Any]:
    return {
        "trial": t.trial,
        "status": t.status,
        "value": t.value,
        "raw": t.raw,
        "flagged": t.flagged,
        "params": t.params,
        "loss": t.loss,
        "optimizer": t.optimizer,
        "epochs": t.epochs,
        "reason": t.reason,
    }


def phase_status(study: Study, state: StudyState, number: int) -> dict[str, Any]:
    """One phase of a study: plan, trial counts, best trial, lineage and every trial."""
    plan, ps = load_plan(study, number), state.phase(number)
    best = ps.best()
    return {
        "phase": number,
        "strategy": plan.strategy,
        "planned": plan.planned_trials(),
        **ps.counts(),
        "best_trial": best.trial if best else None,
        "best_value": best.value if best else None,
        "closed": ps.closed is not None,
        "lineage": lineage(plan.handover),
        "trials": [trial_json(t) for t in ps.trials.values()],
    }


def study_status(study: Study) -> dict[str, Any]:
    """Every started phase, and the phase 1 -> 2 rank correlation when both exist."""
    state = study.state()
    return {
        "study": str(study.root),
        "storage": study.storage_label(),
        "phases": [phase_status(study, state, n) for n in study.frozen_phases()],
        "correlation_1_2": phase_correlation(state, 1, 2) if {1, 2} <= set(state.phases) else None,
    }


def results_phase(study: Study, state: StudyState, phase: int | None) -> int:
    """`phase`, or else the latest phase with a completed trial."""
    if phase is not None:
        return phase
    with_results = [n for n in study.frozen_phases() if state.phase(n).measured()]
    if not with_results:
        raise UsageError(f"{study.root}: no completed trial yet; see `clipctl tune status`")
    return with_results[-1]


def best_trial(study: Study, phase: int | None) -> tuple[int, PhasePlan, TrialRecord]:
    """(phase, its plan, its best trial) of `phase` or the latest phase with results."""
    state = study.state()
    number = results_phase(study, state, phase)
    plan, record = load_plan(study, number), state.phase(number).best()
    if record is None:
        raise UsageError(f"{study.root}: phase {number} has no completed trial yet; see `clipctl tune status`")
    return number, plan, record


def export_best(
    study: Study,
    number: int,
    plan: PhasePlan,
    record: TrialRecord,
    path: Path,
    force: bool = False,
    as_trial: bool = False,
) -> None:
    """Write a trial as a recipe `clipctl train` runs as is (run name and folder left to the user): by default
    at full length (the phase's budget settings reset to the base recipe's), with `as_trial` as the trial ran."""
    if path.exists() and not force:
        raise UsageError(f"{path}: already exists; choose another path or add --force")
    header = (
        f"# Best trial of tuning phase {number} ({record.name}, {plan.objective} = {percent(record.value)}) "
        f"from study {study.root}.\n"
    )
    if as_trial:
        recipe = plan.trial_recipe(record.params, "", "runs")
        header += "# As the trial ran (--as-trial): the phase's budget settings are kept.\n"
    else:
        recipe, changed = plan.full_recipe(record.params)
        header += _reset_note(changed)
    atomic_write_text(path, header + f"# Train it with: clipctl train {path}\n" + recipe.to_toml())


def _reset_note(changed: dict[str, tuple[Any, Any]]) -> str:
    """The comment that says which of the trial's cheap settings the full-training recipe does not keep."""
    if not changed:
        return "# Full training: the trial already ran with the base recipe's length and data.\n"
    items = "\n".join(f"#   {key} = {full!r} (the trial: {trial!r})" for key, (trial, full) in changed.items())
    return (
        "# Full training: the phase's budget settings are reset to the base recipe's values\n"
        f"{items}\n# (`clipctl tune best --export FILE --as-trial` writes the trial as it ran).\n"
    )
