"""PNG figures of a study (matplotlib, Agg backend): the report's figures 2-6 for each phase.

Per phase: objective by optimizer (coloured by loss) and by loss (coloured by optimizer), the progression of
the objective with the best so far (the convergence plot), parameter importance, and the objective against
each searched parameter. Every objective is drawn as measured, in percent, higher is better (the optimizer's
minimised negation never reaches a figure); penalised trials are crosses, never measurements.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clipctl.tune.importance import MIN_TRIALS, importance  # noqa: E402
from clipctl.tune.phases import PhasePlan  # noqa: E402
from clipctl.tune.space import CatDim, Dim, RealDim  # noqa: E402
from clipctl.tune.store import PhaseState, TrialRecord  # noqa: E402

PANEL_COLUMNS = 3  # parameter panels per row: each stays wide enough to read at the default size


def _save(figure: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def _pct(values: list[float]) -> list[float]:
    return [100 * v for v in values]


def _ylabel(objective: str) -> str:
    return f"{objective} (%, higher is better)"


def objective_by(trials: list[TrialRecord], group: str, colour: str, objective: str, title: str, path: Path) -> Path:
    """Strip plot: one column per `group` value (loss or optimizer), points coloured by `colour`."""
    groups = sorted({getattr(t, group) for t in trials})
    colours = sorted({getattr(t, colour) for t in trials})
    cmap = plt.get_cmap("tab10")
    rng = np.random.default_rng(0)
    figure, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) + 3), 4.5), layout="constrained")
    for ci, name in enumerate(colours):
        for flagged in (False, True):
            chosen = [t for t in trials if getattr(t, colour) == name and t.flagged == flagged]
            if not chosen:
                continue
            x = np.array([groups.index(getattr(t, group)) for t in chosen], dtype=float) + rng.uniform(
                -0.12, 0.12, len(chosen)
            )
            ax.scatter(
                x,
                _pct([t.value for t in chosen]),
                color=cmap(ci % 10),
                s=28,
                alpha=0.85,
                marker="x" if flagged else "o",
                label=f"{name} (penalty)" if flagged else name,
            )
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set_xlim(-0.5, len(groups) - 0.5)
    ax.set_ylabel(_ylabel(objective))
    ax.set_title(title)
    ax.legend(title=colour, fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def progression(state: PhaseState, objective: str, title: str, path: Path) -> Path:
    """Objective per trial in order, the best so far (the convergence curve), and penalised trials as crosses."""
    finished = state.finished()
    figure, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    measured = [t for t in finished if not t.flagged]
    ax.scatter([t.trial for t in measured], _pct([t.value for t in measured]), s=24, label="measured")
    flagged = [t for t in finished if t.flagged]
    if flagged:
        ax.scatter(
            [t.trial for t in flagged],
            _pct([t.value for t in flagged]),
            marker="x",
            color="tab:red",
            s=30,
            label="failed/pruned (penalty)",
        )
    best, xs, ys = -np.inf, [], []
    for t in measured:
        best = max(best, t.value)
        xs.append(t.trial)
        ys.append(100 * best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:green", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(_ylabel(objective))
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(figure, path)


def importance_bars(plan: PhasePlan, trials: list[TrialRecord], title: str, path: Path) -> Path:
    rows = importance(plan.space, trials, seed=plan.seed)[::-1]
    figure, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.8), layout="constrained")
    colours = ["tab:green" if (r.spearman or 0) >= 0 else "tab:red" for r in rows]
    ax.barh([r.name for r in rows], _pct([r.importance for r in rows]), color=colours)
    ax.set_xlabel("share of the importance (%, random forest)")
    ax.set_title(f"{title}\ngreen: the objective rises with the parameter, red: it falls (Spearman)", fontsize=10)
    return _save(figure, path)


def _varying(plan: PhasePlan, trials: list[TrialRecord]) -> list[Dim]:
    """The searched dimensions that took more than one value among the trials."""
    return [d for d in plan.space.dims if len({repr(t.params.get(d.name)) for t in trials}) > 1]


def _panel(
    ax: plt.Axes, dim: Dim, trials: list[TrialRecord], best: TrialRecord | None, rng: np.random.Generator
) -> None:
    """One parameter: each trial that used it at (its value, its objective); the best trial as a star."""
    used = [t for t in trials if dim.name in t.params]
    if isinstance(dim, CatDim):
        labels = [str(c) for c in dim.categories]
        position = {str(c): i for i, c in enumerate(dim.categories)}
        x = np.array([position[str(t.params[dim.name])] for t in used], dtype=float)
        x += rng.uniform(-0.12, 0.12, len(used))
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=9)
        ax.set_xlim(-0.5, len(labels) - 0.5)
    else:
        x = np.array([float(t.params[dim.name]) for t in used])
        if isinstance(dim, RealDim) and dim.log:
            ax.set_xscale("log")
    flagged = np.array([t.flagged for t in used], dtype=bool)
    y = np.array(_pct([t.value for t in used]))
    ax.scatter(x[~flagged], y[~flagged], s=22, alpha=0.8, color="tab:blue")
    if flagged.any():
        ax.scatter(x[flagged], y[flagged], s=26, marker="x", color="tab:red")
    i = next((i for i, t in enumerate(used) if best is not None and t.trial == best.trial), None)
    if i is not None:
        ax.scatter([x[i]], [y[i]], s=160, marker="*", color="gold", edgecolors="black", zorder=3)
    ax.set_title(dim.name, fontsize=10)
    ax.grid(alpha=0.3)


def parameter_panels(plan: PhasePlan, state: PhaseState, title: str, path: Path) -> Path | None:
    """The objective against each searched parameter (a slice per parameter, what skopt's partial-dependence
    grid was read for), as measured: no fitted surrogate, no negation. None when no parameter varied."""
    trials = state.finished()
    dims = _varying(plan, trials)
    if not dims:
        return None
    columns = len(dims) if len(dims) <= PANEL_COLUMNS else min(PANEL_COLUMNS, math.ceil(math.sqrt(len(dims))))
    rows = math.ceil(len(dims) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.4 * columns, 3.6 * rows), squeeze=False, layout="constrained", sharey=True
    )
    rng = np.random.default_rng(0)
    for ax, dim in zip(axes.flat, dims):
        _panel(ax, dim, trials, state.best(), rng)
    for ax in axes.flat[len(dims) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(_ylabel(plan.objective), fontsize=9)
    figure.suptitle(f"{title}\n★ best trial, × failed/pruned (penalty)", fontsize=11)
    return _save(figure, path)


def phase_plots(plan: PhasePlan, state: PhaseState, out_dir: Path) -> list[Path]:
    """Every figure the phase's finished trials allow; returns the files written."""
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
        progression(
            state, obj, f"phase {plan.phase}: {obj} per trial and best so far", out_dir / f"{prefix}_progression.png"
        ),
    ]
    measured = state.measured()
    if len(measured) >= MIN_TRIALS and len(plan.space):
        written.append(
            importance_bars(
                plan, measured, f"phase {plan.phase}: parameter importance", out_dir / f"{prefix}_importance.png"
            )
        )
    panels = parameter_panels(
        plan, state, f"phase {plan.phase}: {obj} by parameter", out_dir / f"{prefix}_parameters.png"
    )
    return written + ([panels] if panels is not None else [])
