"""The search strategies behind a phase (`STRATEGIES`: gp, grid, random): `skopt.Optimizer`, a seeded design
plus random draws, and a frozen grid.

This is the only module that imports scikit-optimize, and only when a strategy is built (reading a tune
recipe needs the names, not skopt). Every strategy has the same two calls, `ask(n,
pending)` and `tell(point, value)`, on point dicts and *maximised* values (skopt minimises, so values are
negated here). An optimizer's state is a pure function of its constructor arguments and the sequence of
those calls, which is what makes journal replay exact: rebuild with the same `random_state`, repeat the
calls in journal order, and the next proposal is the one an uninterrupted study would make.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from clipctl.tune.space import IntDim, RealDim, SearchSpace

if TYPE_CHECKING:
    from skopt.space import Dimension


class Search(Protocol):
    def ask(self, n: int, pending: list[dict[str, Any]]) -> list[dict[str, Any]]: ...

    def tell(self, point: dict[str, Any], value: float) -> None: ...


def skopt_dimensions(space: SearchSpace) -> list[Dimension]:
    from skopt.space import Categorical, Integer, Real

    dims: list[Dimension] = []
    for d in space.dims:
        if isinstance(d, RealDim):
            dims.append(Real(d.low, d.high, prior="log-uniform" if d.log else "uniform", name=d.name))
        elif isinstance(d, IntDim):
            dims.append(Integer(d.low, d.high, name=d.name))
        else:
            dims.append(Categorical(list(d.categories), name=d.name))
    return dims


class SkoptSearch:
    """Gaussian-process search (strategy "gp") through `skopt.Optimizer`."""

    def __init__(
        self,
        space: SearchSpace,
        *,
        n_initial: int = 8,
        acq: str = "gp_hedge",
        initial_point_generator: str = "lhs",
        seed: int = 0,
    ) -> None:
        from skopt import Optimizer

        self.space = space
        self._opt = Optimizer(
            skopt_dimensions(space),
            base_estimator="GP",
            n_initial_points=n_initial,
            initial_point_generator=initial_point_generator,
            acq_func=acq,
            random_state=seed,
            model_queue_size=1,  # only the latest surrogate is ever used; keeps memory flat over long studies
        )

    def ask(self, n: int, pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """n new points. Running trials (`pending`) are told a constant lie first (skopt's cl_min), so
        parallel workers never receive the point another worker is already evaluating."""
        with _quiet_single_thread():
            if not pending:
                raw = [self._opt.ask()] if n == 1 else self._opt.ask(n_points=n)
                return [self.space.point(x) for x in raw]
            opt = self._opt.copy(random_state=self._opt.rng.randint(0, np.iinfo(np.int32).max))
            lie = float(np.min(self._opt.yi)) if self._opt.yi else 0.0
            opt.tell([self.space.as_list(p) for p in pending], [lie] * len(pending))
            raw = []
            for i in range(n):
                raw.append(opt.ask())
                if i < n - 1:
                    opt.tell(raw[-1], lie)
        return [self.space.point(x) for x in raw]

    def tell(self, point: dict[str, Any], value: float) -> None:
        with _quiet_single_thread():
            self._opt.tell(self.space.as_list(point), -float(value))


@contextmanager
def _quiet_single_thread() -> Iterator[None]:
    """One BLAS thread: the GP's matrices are tiny, and threaded BLAS on a busy machine is several
    times slower. Warnings silenced: "The objective has been evaluated at this point before"."""
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class RandomSearch:
    """Strategy "random": the first `n_initial` points from skopt's initial-point design (LHS, Sobol, ...),
    then independent uniform draws (on the log scale for log-uniform ranges) from a seeded generator."""

    def __init__(
        self, space: SearchSpace, *, n_initial: int = 8, initial_point_generator: str = "lhs", seed: int = 0
    ) -> None:
        from skopt.space import Space
        from skopt.utils import cook_initial_point_generator

        self.space = space
        self._space = Space(skopt_dimensions(space))
        self._rng = np.random.RandomState(seed)
        self._initial = (
            []
            if initial_point_generator == "random"
            else cook_initial_point_generator(initial_point_generator).generate(
                self._space.dimensions, n_initial, random_state=seed
            )
        )
        self._asked = 0

    def ask(self, n: int, pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
        points = []
        for _ in range(n):
            if self._asked < len(self._initial):
                raw = self._initial[self._asked]
            else:
                raw = self._space.rvs(n_samples=1, random_state=self._rng)[0]
            self._asked += 1
            points.append(self.space.point(raw))
        return points

    def tell(self, point: dict[str, Any], value: float) -> None:
        return None


class GridSearch:
    """The frozen grid, in order; `ask` hands out the next unasked points (tells change nothing)."""

    def __init__(self, points: list[dict[str, Any]]) -> None:
        self.points = points
        self._next = 0

    def ask(self, n: int, pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
        chosen = self.points[self._next : self._next + n]
        self._next += len(chosen)
        return [dict(p) for p in chosen]

    def tell(self, point: dict[str, Any], value: float) -> None:
        return None


def _gp(space: SearchSpace, grid: list[dict[str, Any]] | None, **options: Any) -> Search:
    return SkoptSearch(space, **options)


def _grid(space: SearchSpace, grid: list[dict[str, Any]] | None, **options: Any) -> Search:
    return GridSearch(grid or [])


def _random(space: SearchSpace, grid: list[dict[str, Any]] | None, *, acq: str, **options: Any) -> Search:
    return RandomSearch(space, **options)


# name -> factory(space, grid, n_initial=, acq=, initial_point_generator=, seed=); the names a tune recipe accepts.
STRATEGIES: dict[str, Callable[..., Search]] = {"gp": _gp, "grid": _grid, "random": _random}


def make_search(
    strategy: str,
    space: SearchSpace,
    grid: list[dict[str, Any]] | None,
    *,
    n_initial: int,
    acq: str,
    initial_point_generator: str,
    seed: int,
) -> Search:
    return STRATEGIES[strategy](
        space, grid, n_initial=n_initial, acq=acq, initial_point_generator=initial_point_generator, seed=seed
    )
