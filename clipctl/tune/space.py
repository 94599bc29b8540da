"""Search spaces from TOML: real (uniform or log-uniform), integer and categorical dimensions.

A space is the `[tune.space]` table of a tune recipe: `{ low, high, prior, type }` for ranges, a list
for categories. Loss-specific keys (`loss.rho_I`, ...) only apply to some losses; for a trial whose loss
does not read one, the key is *canonicalised* (set to the dimension's first value) before the optimizer
is told, so the surrogate model never sees noise in a dimension that had no effect. The journal keeps
both the proposed and the canonical point.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError, model_validator

from clipctl.errors import UsageError
from clipctl.losses.registry import key_users
from clipctl.schema import Section, format_validation_error, known_keys

Scalar = str | int | float | bool


class TuneParam(Section):
    """One range dimension of a search space (`{ low, high, prior, type }`); a TOML list is categories."""

    low: float
    high: float
    prior: Literal["uniform", "log-uniform"] = "uniform"
    type: Literal["real", "int"] = "real"

    @model_validator(mode="after")
    def _check_bounds(self) -> TuneParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.prior == "log-uniform" and self.low <= 0:
            raise ValueError(f"a log-uniform range needs low > 0 (got {self.low})")
        return self


@dataclass(frozen=True)
class RealDim:
    name: str
    low: float
    high: float
    log: bool = False

    def canonical(self) -> float:
        return self.low

    def coerce(self, value: Any) -> float:
        return float(value)

    def to_toml(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "prior": "log-uniform" if self.log else "uniform", "type": "real"}


@dataclass(frozen=True)
class IntDim:
    name: str
    low: int
    high: int

    def canonical(self) -> int:
        return self.low

    def coerce(self, value: Any) -> int:
        return int(value)

    def to_toml(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "type": "int"}


@dataclass(frozen=True)
class CatDim:
    name: str
    categories: tuple[Scalar, ...]

    def canonical(self) -> Scalar:
        return self.categories[0]

    def coerce(self, value: Any) -> Scalar:
        value = plain(value)
        for category in self.categories:  # keep the declared type (1 vs 1.0, "1" vs 1)
            if category == value and type(category) is type(value):
                return category
        for category in self.categories:
            if category == value:
                return category
        raise ValueError(f"{self.name}: {value!r} is not one of {list(self.categories)}")

    def to_toml(self) -> list[Scalar]:
        return list(self.categories)


Dim = RealDim | IntDim | CatDim


def plain(value: Any) -> Any:
    """numpy scalars (what skopt returns) -> Python scalars, so points serialise to JSON/TOML exactly."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def applies(key: str, loss_name: str) -> bool:
    """Whether a recipe key has an effect for a loss (only loss-specific keys can be inapplicable)."""
    section, _, leaf = key.partition(".")
    if section != "loss" or leaf == "name":
        return True
    users = key_users().get(leaf)
    return users is None or loss_name in users


class SearchSpace:
    """An ordered tuple of dimensions; points are dicts `{recipe key: value}` in that order."""

    def __init__(self, dims: Iterable[Dim]) -> None:
        self.dims: tuple[Dim, ...] = tuple(dims)
        self.names = [d.name for d in self.dims]

    def __len__(self) -> int:
        return len(self.dims)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.dims == other.dims

    @classmethod
    def from_toml(cls, table: dict[str, Any], source: str) -> SearchSpace:
        """Parse `[tune.space]` (a recipe's, or the frozen copy in study.toml); an empty or malformed space is a
        UsageError naming the key. `tune.recipe.check_space` then checks the values against the base recipe."""
        if not table:
            raise UsageError(
                f'{source}: [tune.space] is empty; add at least one parameter, e.g. "optim.lr" = '
                f"{{ low = 1e-4, high = 1e-2 }}"
            )
        dims: list[Dim] = []
        for key, spec in table.items():
            where = f"{source}: tune.space.{key}"
            if isinstance(spec, list):
                if not spec:
                    raise UsageError(f"{where}: empty list; give at least one value")
                bad = [v for v in spec if not isinstance(v, (str, int, float, bool))]
                if bad:
                    raise UsageError(
                        f"{where}: {bad[0]!r} is not a scalar; categories must be strings, numbers or booleans"
                    )
                if len(set(map(repr, spec))) != len(spec):
                    raise UsageError(f"{where} = {spec!r}: repeated values; list each category once")
                dims.append(CatDim(key, tuple(spec)))
            elif isinstance(spec, dict):
                try:
                    param = TuneParam.model_validate(spec)
                except ValidationError as err:
                    raise UsageError(format_validation_error(where, err, known_keys(TuneParam))) from None
                if param.type == "int":
                    if param.prior == "log-uniform":
                        raise UsageError(
                            f'{where}: type = "int" takes no prior; use a list of values for a log-spaced integer grid'
                        )
                    if param.low != int(param.low) or param.high != int(param.high):
                        raise UsageError(
                            f'{where}: type = "int" needs whole-number bounds (got {param.low}, {param.high})'
                        )
                    dims.append(IntDim(key, int(param.low), int(param.high)))
                else:
                    dims.append(RealDim(key, float(param.low), float(param.high), param.prior == "log-uniform"))
            else:
                raise UsageError(f"{where} = {spec!r}: expected a list of values or {{ low, high }}")
        return cls(dims)

    def to_toml(self) -> dict[str, Any]:
        return {d.name: d.to_toml() for d in self.dims}

    def bounds(self) -> dict[str, list[Any]]:
        """The values a dimension can take at its extremes: its categories, or its low and high."""
        return {d.name: list(d.categories) if isinstance(d, CatDim) else [d.low, d.high] for d in self.dims}

    def point(self, values: Iterable[Any]) -> dict[str, Any]:
        """skopt's list (numpy scalars) -> a point dict of Python values."""
        return {d.name: d.coerce(plain(v)) for d, v in zip(self.dims, values)}

    def as_list(self, point: dict[str, Any]) -> list[Any]:
        return [point[name] for name in self.names]

    def canonicalise(self, point: dict[str, Any], default_loss: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(told point, applied params): inapplicable loss keys get the canonical value / are not applied."""
        loss = str(point.get("loss.name", default_loss))
        told, params = {}, {}
        for dim in self.dims:
            if applies(dim.name, loss):
                told[dim.name] = params[dim.name] = point[dim.name]
            else:
                told[dim.name] = dim.canonical()
        return told, params

    def without(self, names: set[str]) -> SearchSpace:
        return SearchSpace(d for d in self.dims if d.name not in names)

    def grid(self, source: str) -> list[dict[str, Any]]:
        """Every combination of the categorical dimensions; a range cannot be gridded."""
        ranges = [d.name for d in self.dims if not isinstance(d, CatDim)]
        if ranges:
            raise UsageError(f'{source}: tune.space.{ranges[0]}: strategy = "grid" needs a list of values, not a range')
        combos = itertools.product(*(d.categories for d in self.dims if isinstance(d, CatDim)))
        return [dict(zip(self.names, combo)) for combo in combos]


def same_point(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal up to float round-off (a replayed proposal vs the journal's copy)."""
    if a.keys() != b.keys():
        return False
    for key, x in a.items():
        y = b[key]
        if isinstance(x, float) or isinstance(y, float):
            if not (
                isinstance(x, (int, float))
                and isinstance(y, (int, float))
                and math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
            ):
                return False
        elif x != y:
            return False
    return True
