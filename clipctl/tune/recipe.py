"""Tune recipes: the `[tune]` table's schema, loading, and the phases the built-in recipes define.

A tune recipe names a base recipe (`tune.base`, relative to the tune recipe), values fixed for every trial
(`[tune.fixed]`, dotted recipe keys) and a search space (`[tune.space]`). Loading checks all three against
the base: every fixed value and every bound or category of the space must give a valid recipe.
The phases are the files `recipes/tune/phaseN.toml` of the built-in recipes; a new phase is a new file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from clipctl.errors import UsageError
from clipctl.recipe import (
    Recipe,
    apply_overrides,
    builtin_recipes_dir,
    find_recipe,
    load_raw,
    merge_values,
    validate_recipe,
)
from clipctl.schema import Section, closest, format_validation_error, known_keys
from clipctl.tune.space import SearchSpace
from clipctl.tune.strategies import STRATEGIES

_PHASE_FILE = re.compile(r"phase(\d+)\.toml")
# Through `extends`, a child's [tune.fixed] and [tune.space] replace the parent's: a space is never a mix of two.
_WHOLE_TABLES = ("fixed", "space")


class TuneConfig(Section):
    base: str
    phase: int = Field(1, ge=1)
    strategy: Literal[tuple(STRATEGIES)] = "gp"  # type: ignore[valid-type]
    n_trials: int = Field(20, ge=1)
    n_initial: int = Field(8, ge=1)
    acq: Literal["gp_hedge", "EI", "PI", "LCB"] = "gp_hedge"
    initial_point_generator: Literal["random", "lhs", "sobol", "halton", "hammersly"] = "lhs"
    seed: int = Field(0, ge=0)
    objective: str = "val/objective"
    prune: bool = False
    prune_grace_epochs: int = Field(2, ge=0)
    from_phase: int = Field(0, ge=0)  # 0: none; else read that (earlier) phase's results for hand-over
    top_k: int = Field(3, ge=1)
    fixed: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Any] = Field(default_factory=dict)

    @property
    def grids_handover(self) -> bool:
        """A grid over an earlier phase's top combinations: its own space may be empty."""
        return self.strategy == "grid" and self.from_phase > 0


class TuneRecipe(Section):
    tune: TuneConfig


def tune_phases() -> list[int]:
    """The phase numbers of the built-in tune recipes (`recipes/tune/phaseN.toml`)."""
    folder = builtin_recipes_dir() / "tune"
    return sorted(int(m.group(1)) for p in folder.glob("phase*.toml") if (m := _PHASE_FILE.fullmatch(p.name)))


def validate_tune_recipe(raw: dict[str, Any], source: str) -> TuneRecipe:
    try:
        return TuneRecipe.model_validate(raw)
    except ValidationError as err:
        raise UsageError(format_validation_error(source, err, known_keys(TuneRecipe))) from None


def load_tune_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> tuple[TuneRecipe, Path]:
    """A tune recipe plus the path its `base` is relative to; the base recipe is validated too."""
    path = find_recipe(name_or_path)
    raw = apply_overrides(load_raw(path, _WHOLE_TABLES), overrides or [])
    if "tune" not in raw:
        raise UsageError(f"{path}: not a tune recipe (no [tune] table); see recipes/tune/phase1.toml")
    tune = validate_tune_recipe(raw, str(path))
    probe, _ = fixed_base(tune, path)
    check_space(tune, probe, str(path))
    return tune, path


def load_phase_recipe(phase: int | None, recipe: str | None) -> tuple[TuneRecipe, Path]:
    """`--recipe` if given, else the built-in recipe of `phase` (default: the first); they must agree."""
    phases = tune_phases()
    if phase is not None and phase not in phases:
        *others, last = [str(n) for n in phases]
        raise UsageError(f"--phase {phase}: expected {', '.join(others) + ' or ' if others else ''}{last}")
    tune, path = load_tune_recipe(recipe or f"tune/phase{phase or phases[0]}")
    if phase is not None and tune.tune.phase != phase:
        raise UsageError(
            f"{path}: tune.phase = {tune.tune.phase} but --phase {phase}; drop --phase or use the phase's recipe"
        )
    return tune, path


def tune_base_path(tune: TuneRecipe, tune_path: Path) -> Path:
    base = Path(tune.tune.base)
    resolved = base if base.is_absolute() else tune_path.parent / base
    if not resolved.is_file():
        raise UsageError(f"{tune_path}: tune.base = {tune.tune.base!r}: no such file {resolved}")
    return resolved


def fixed_base(tune: TuneRecipe, tune_path: Path) -> tuple[dict[str, Any], Recipe]:
    """The base recipe's tables with `tune.fixed` merged in, and the recipe they validate to."""
    base_path = tune_base_path(tune, tune_path)
    raw = merge_values(load_raw(base_path), tune.tune.fixed)
    return raw, validate_recipe(raw, f"{tune_path} (tune.fixed over {base_path.name})", explicit_loss_keys=set())


def parse_space(cfg: TuneConfig, source: str) -> SearchSpace:
    """`[tune.space]` as a SearchSpace (empty only where a grid hand-over supplies the combinations)."""
    if not cfg.space and cfg.grids_handover:
        return SearchSpace([])
    return SearchSpace.from_toml(cfg.space, source)


def check_space(tune: TuneRecipe, base_raw: dict[str, Any], source: str) -> SearchSpace:
    """The parsed space; every key must be a recipe key, and each bound or category must validate there."""
    space = parse_space(tune.tune, source)
    known = sorted(known_keys(Recipe))
    for key, values in space.bounds().items():
        if key not in known:
            hint = closest(key, known)
            raise UsageError(
                f"{source}: tune.space.{key}: not a recipe key" + (f"; did you mean {hint}?" if hint else "")
            )
        for value in values:
            validate_recipe(merge_values(base_raw, {key: value}), f"{source}: tune.space", explicit_loss_keys=set())
    return space
