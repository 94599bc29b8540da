"""PNG figures of a study (matplotlib, Agg backend): the report's figures 2-6 for each phase.

Per phase: objective by optimizer (coloured by loss) and by loss (coloured by optimizer), progression of
the objective with the running best, parameter importance, and scikit-optimize's convergence and
objective (partial dependence) plots. Penalised trials are drawn as crosses, never as measurements.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clipctl.tune.importance import MIN_TRIALS, importance  # noqa: E402
from clipctl.tune.phases import PhasePlan  # noqa: E402
from clipctl.tune.store import PhaseState, TrialRecord  # noqa: E402


def _save(figure: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def objective_by(trials: list[TrialRecord], group: str, colour: str, objective: str, title: str, path: Path) -> Path:
    """Strip plot: one column per `group` value (loss or optimizer), points coloured by `colour`."""
    groups = sorted({getattr(t, group) for t in trials})
    colours = sorted({getattr(t, colour) for t in trials})
    cmap = plt.get_cmap("tab10")
    rng = np.random.default_rng(0)
    figure, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(groups) + 2), 4))
    for ci, name in enumerate(colours):
        for flagged in (False, True):
            chosen = [t for t in trials if getattr(t, colour) == name and t.flagged == flagged]
            if not chosen:
                continue
            x = np.array([groups.index(getattr(t, group)) for t in chosen], dtype=float) + rng.uniform(
                -0.2, 0.2, len(chosen)
            )
            ax.scatter(
                x,
                [t.value for t in chosen],
                color=cmap(ci % 10),
                s=28,
                alpha=0.85,
                marker="x" if flagged else "o",
                label=f"{name} (penalty)" if flagged else name,
            )
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.set_ylabel(objective)
    ax.set_title(title)
    ax.legend(title=colour, fontsize=8, title_fontsize=8, loc="best")
    ax.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def progression(state: PhaseState, objective: str, title: str, path: Path) -> Path:
    """Objective per trial in order, the running best, and penalised trials as crosses."""
    finished = state.finished()
    figure, ax = plt.subplots(figsize=(6, 4))
    measured = [t for t in finished if not t.flagged]
    ax.scatter([t.trial for t in measured], [t.value for t in measured], s=24, label="measured")
    flagged = [t for t in finished if t.flagged]
    if flagged:
        ax.scatter(
            [t.trial for t in flagged],
            [t.value for t in flagged],
            marker="x",
            color="tab:red",
            s=30,
            label="failed/pruned (penalty)",
        )
    best, xs, ys = -np.inf, [], []
    for t in measured:
        best = max(best, t.value)
        xs.append(t.trial)
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:green", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(figure, path)


def importance_bars(plan: PhasePlan, trials: list[TrialRecord], title: str, path: Path) -> Path:
    rows = importance(plan.space, trials, seed=plan.seed)[::-1]
    figure, ax = plt.subplots(figsize=(6, 0.45 * len(rows) + 1.5))
    colours = ["tab:green" if (r.spearman or 0) >= 0 else "tab:red" for r in rows]
    ax.barh([r.name for r in rows], [r.importance for r in rows], color=colours)
    ax.set_xlabel("relative importance (random forest); green: positive, red: negative Spearman correlation")
    ax.set_title(title)
    return _save(figure, path)


def phase_plots(plan: PhasePlan, state: PhaseState, out_dir: Path) -> list[Path]:
    """Every figure the phase's finished trials allow; returns the files written."""
    from clipctl.tune.strategies import save_skopt_plots

    finished = state.finished()
    if not finished:
        return []
    prefix = f"phase{plan.phase}"
    obj = plan.objective
    written = [
        objective_by(
            finished,
            "optimizer",
            "loss",
            obj,
            f"phase {plan.phase}: {obj} by optimizer",
            out_dir / f"{prefix}_objective_by_optimizer.png",
        ),
        objective_by(
            finished,
            "loss",
            "optimizer",
            obj,
            f"phase {plan.phase}: {obj} by loss",
            out_dir / f"{prefix}_objective_by_loss.png",
        ),
        progression(state, obj, f"phase {plan.phase}: progression of {obj}", out_dir / f"{prefix}_progression.png"),
    ]
    measured = state.measured()
    if len(measured) >= MIN_TRIALS and len(plan.space):
        written.append(
            importance_bars(
                plan, measured, f"phase {plan.phase}: parameter importance", out_dir / f"{prefix}_importance.png"
            )
        )
    written += save_skopt_plots(
        plan.space, [t.point for t in finished], [t.value for t in finished], out_dir, prefix, seed=plan.seed
    )
    return written
