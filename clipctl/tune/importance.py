"""Hyperparameter importance: random-forest importance and Spearman correlation per parameter.

This is the method behind the report's "relative importance" figures (a random forest fitted to the
trials' parameters -> objective; a parameter's share of the forest's impurity reduction), computed
locally with scikit-learn. A categorical parameter is one-hot encoded and its columns' importances are
summed; its correlation is that of the category whose indicator correlates most with the objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from clipctl.errors import UsageError
from clipctl.tune.space import CatDim, RealDim, SearchSpace
from clipctl.tune.store import TrialRecord

MIN_TRIALS = 5


@dataclass(frozen=True)
class ParamImportance:
    name: str
    importance: float  # share of the forest's importance (sums to 1 over the parameters that varied)
    spearman: float | None  # rank correlation with the objective; None when undefined
    detail: str  # categoricals: the category the correlation refers to; "constant" if it never varied


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rho = spearmanr(x, y).statistic
    return None if math.isnan(rho) else float(rho)


def importance(space: SearchSpace, trials: list[TrialRecord], seed: int = 0) -> list[ParamImportance]:
    """Per-parameter importance on measured (not penalised) trials, most important first."""
    from sklearn.ensemble import RandomForestRegressor

    if len(trials) < MIN_TRIALS:
        raise UsageError(
            f"importance needs at least {MIN_TRIALS} completed trials, this phase has {len(trials)}; "
            "run more trials (tune.n_trials) first"
        )
    y = np.array([t.value for t in trials], dtype=float)
    columns: list[np.ndarray] = []
    owner: list[str] = []
    results: dict[str, ParamImportance] = {}
    correlation: dict[str, tuple[float | None, str]] = {}
    for dim in space.dims:
        values = [t.point[dim.name] for t in trials]
        if len({repr(v) for v in values}) < 2:
            results[dim.name] = ParamImportance(dim.name, 0.0, None, "constant")
            continue
        if isinstance(dim, CatDim):
            best: tuple[float | None, str] = (None, "")
            for category in dim.categories:
                indicator = np.array([float(v == category) for v in values])
                if np.ptp(indicator) == 0:
                    continue
                columns.append(indicator)
                owner.append(dim.name)
                rho = _spearman(indicator, y)
                if rho is not None and (best[0] is None or abs(rho) > abs(best[0])):
                    best = (rho, f"{dim.name}={category}")
            correlation[dim.name] = best
        else:
            x = np.array(values, dtype=float)
            if isinstance(dim, RealDim) and dim.log:
                x = np.log10(x)
            columns.append(x)
            owner.append(dim.name)
            correlation[dim.name] = (_spearman(x, y), "log scale" if isinstance(dim, RealDim) and dim.log else "")
    if not columns:
        raise UsageError("importance: no parameter varied across the completed trials")
    forest = RandomForestRegressor(n_estimators=300, random_state=seed)
    forest.fit(np.column_stack(columns), y)
    shares: dict[str, float] = {}
    for name, share in zip(owner, forest.feature_importances_):
        shares[name] = shares.get(name, 0.0) + float(share)
    total = sum(shares.values()) or 1.0
    for name, share in shares.items():
        rho, detail = correlation[name]
        results[name] = ParamImportance(name, share / total, rho, detail)
    return sorted(results.values(), key=lambda r: (-r.importance, r.name))
