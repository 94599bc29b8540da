"""Phase plans: what a phase runs, frozen into `study.toml` the first time the phase starts.

A plan is the tune recipe resolved against the study: the base recipe (raw, `extends` merged), the fixed
overrides, the space, and the hand-over from an earlier phase. With `strategy = "grid"` the hand-over
is phase 1's top-k (loss, optimizer) combinations crossed with the phase's own lists (the report's phase
2); with `gp`/`random` it is the earlier phase's best trial, whose parameters become fixed values the
new space searches around (phase 3). Trial recipes are always built from the frozen plan, so every
worker, on any machine, runs exactly the same trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from clipctl.errors import UsageError
from clipctl.recipe import Recipe, load_raw, merge_values, tomllib, validate_recipe
from clipctl.tune.recipe import TuneConfig, TuneRecipe, fixed_base, parse_space, tune_base_path
from clipctl.tune.space import CatDim, SearchSpace, applies
from clipctl.tune.store import PhaseState, Study, StudyState

# Settings a plan carries; with from_phase/top_k (and space, fixed, base) they define a phase: changing
# any of them on a live study is refused. n_trials may change (to extend a study).
_PLAN_KEYS = (
    "strategy",
    "n_initial",
    "acq",
    "initial_point_generator",
    "seed",
    "objective",
    "prune",
    "prune_grace_epochs",
)
_IDENTITY_KEYS = _PLAN_KEYS + ("from_phase", "top_k")


# The settings that make a trial cheap (its length, data share, schedule length, evaluation cadence): fixed by
# a phase, they are reset to the base recipe's when the best trial is exported for full training.
BUDGET_KEYS = (
    "train.epochs",
    "train.max_steps",
    "train.early_stop_patience",
    "data.train_fraction",
    "sched.warmup_epochs",
    "sched.cooldown_epochs",
    "eval.every_epochs",
)


def dotted(recipe: Recipe, key: str) -> Any:
    """A recipe's value at a dotted key (`train.epochs`)."""
    value: Any = recipe
    for part in key.split("."):
        value = getattr(value, part)
    return value


@dataclass
class PhasePlan:
    phase: int
    source: str
    strategy: str
    n_trials: int
    n_initial: int
    acq: str
    initial_point_generator: str
    seed: int
    objective: str
    prune: bool
    prune_grace_epochs: int
    space: SearchSpace
    base: dict[str, Any]
    fixed: dict[str, Any]
    default_loss: str
    default_optimizer: str
    identity: dict[str, Any]
    grid: list[dict[str, Any]] | None = None
    handover: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    dropped: dict[str, Any] = field(default_factory=dict)  # categories removed because they cannot run here

    def planned_trials(self) -> int:
        return min(self.n_trials, len(self.grid)) if self.grid is not None else self.n_trials

    def canonicalise(self, point: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.space.canonicalise(point, self.default_loss)

    def names(self, params: dict[str, Any]) -> tuple[str, str]:
        """The (loss, optimizer) a trial with these parameters trains with."""
        return str(params.get("loss.name", self.default_loss)), str(params.get("optim.name", self.default_optimizer))

    def trial_recipe(self, params: dict[str, Any], name: str, out_dir: Path | str) -> Recipe:
        """base <- fixed <- the trial's parameters, validated; loss keys the trial's loss ignores are dropped."""
        raw = merge_values(merge_values(self.base, self.fixed), params)
        raw["run"] = {**raw.get("run", {}), "name": name, "out_dir": str(out_dir)}
        return validate_recipe(raw, f"{self.source} (phase {self.phase} trial {name})", explicit_loss_keys=set())

    def full_recipe(self, params: dict[str, Any]) -> tuple[Recipe, dict[str, tuple[Any, Any]]]:
        """A trial's tuned values at full length: the phase's fixed budget settings (BUDGET_KEYS, which make
        trials cheap) are left to the base recipe. Returns the recipe and {key: (trial value, full value)}
        for each budget setting that changed."""
        kept = {k: v for k, v in self.fixed.items() if k not in BUDGET_KEYS or k in params}
        raw = merge_values(merge_values(self.base, kept), params)
        raw["run"] = {**raw.get("run", {}), "name": "", "out_dir": "runs"}
        recipe = validate_recipe(raw, f"{self.source} (phase {self.phase} at full length)", explicit_loss_keys=set())
        trial = self.trial_recipe(params, "", "runs")
        changed = {
            key: (dotted(trial, key), dotted(recipe, key))
            for key in BUDGET_KEYS
            if dotted(trial, key) != dotted(recipe, key)
        }
        return recipe, changed

    def make_search(self) -> Any:
        from clipctl.tune.strategies import make_search

        return make_search(
            self.strategy,
            self.space,
            self.grid,
            n_initial=self.n_initial,
            acq=self.acq,
            initial_point_generator=self.initial_point_generator,
            seed=self.seed,
        )

    def frozen(self) -> dict[str, Any]:
        data = {
            "source": self.source,
            "n_trials": self.n_trials,
            "space": self.space.to_toml(),
            "base": self.base,
            "fixed": self.fixed,
            "default_loss": self.default_loss,
            "default_optimizer": self.default_optimizer,
            "identity": self.identity,
            "handover": self.handover,
            "dropped": self.dropped,
        }
        data.update({k: getattr(self, k) for k in _PLAN_KEYS})
        if self.grid is not None:
            data["grid"] = self.grid
        return data

    @classmethod
    def from_frozen(cls, phase: int, data: dict[str, Any], n_trials: int | None = None) -> PhasePlan:
        return cls(
            phase=phase,
            source=data["source"],
            strategy=data["strategy"],
            n_trials=n_trials if n_trials is not None else data["n_trials"],
            n_initial=data["n_initial"],
            acq=data["acq"],
            initial_point_generator=data["initial_point_generator"],
            seed=data["seed"],
            objective=data["objective"],
            prune=data["prune"],
            prune_grace_epochs=data["prune_grace_epochs"],
            space=SearchSpace.from_toml(data["space"], f"study.toml phase{phase}"),
            base=data["base"],
            fixed=data["fixed"],
            default_loss=data["default_loss"],
            default_optimizer=data["default_optimizer"],
            identity=data["identity"],
            grid=data.get("grid"),
            handover=data.get("handover", {}),
            dropped=data.get("dropped", {}),
        )


def recipe_identity(tune: TuneRecipe, tune_path: Path) -> tuple[dict[str, Any], set[str]]:
    """The parts of a tune recipe a running study depends on, normalised through TOML for comparison, and the
    base recipe's sha256 as earlier releases wrote it (a study they froze recorded that one)."""
    cfg = tune.tune
    _, probe = fixed_base(tune, tune_path)
    identity = {k: getattr(cfg, k) for k in _IDENTITY_KEYS}
    identity.update(space=cfg.space, fixed=cfg.fixed, base_sha256=probe.sha256())
    return tomllib.loads(tomli_w.dumps(identity)), probe.earlier_sha256s()


def _first_difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if old == new else (path, old, new)


def check_identity(
    study: Study, phase: int, frozen: dict[str, Any], identity: tuple[dict[str, Any], set[str]], source: str
) -> None:
    current, earlier_bases = identity
    recorded = frozen.get("identity", {})
    if recorded.get("base_sha256") in earlier_bases:
        current = {**current, "base_sha256": recorded["base_sha256"]}
    diff = _first_difference(recorded, current)
    if diff is None:
        return
    key, old, new = diff
    what = "base recipe (or its tune.fixed result)" if key == "base_sha256" else f"tune.{key}"
    change = "changed" if key == "base_sha256" else f"{old!r} -> {new!r}"
    raise UsageError(
        f"{source}: {what} differs from phase {phase} of the live study {study.config_path} ({change}); "
        f"a running study's space cannot change: restore the recipe, or start a new study with --study DIR"
    )


def top_combos(state: PhaseState, k: int) -> list[tuple[str, str, float]]:
    """The k best (loss, optimizer) combinations by their best measured objective, best first."""
    best: dict[tuple[str, str], tuple[float, int]] = {}
    for t in state.measured():
        key = (t.loss, t.optimizer)
        if key not in best or t.value > best[key][0]:
            best[key] = (t.value, t.trial)
    ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[1][1]))
    return [(loss, optim, value) for (loss, optim), (value, _) in ranked[:k]]


def phase_correlation(state: StudyState, first: int, second: int) -> dict[str, Any] | None:
    """Spearman rank correlation between two phases' scores of the same (loss, optimizer) configs:
    does the cheap phase predict the expensive one? None when fewer than 3 configs are shared."""
    from scipy.stats import spearmanr

    a = {(loss, opt): v for loss, opt, v in top_combos(state.phase(first), 10**9)}
    b = {(loss, opt): v for loss, opt, v in top_combos(state.phase(second), 10**9)}
    shared = [c for c in b if c in a]
    if len(shared) < 3:
        return None
    rho, p = spearmanr([a[c] for c in shared], [b[c] for c in shared])
    rows = [[c[0], c[1], a[c], b[c]] for c in shared]
    return {
        "first": first,
        "second": second,
        "n": len(shared),
        "rho": None if math.isnan(rho) else float(rho),
        "p": None if math.isnan(p) else float(p),
        "configs": rows,
    }


def _handover(
    cfg: TuneConfig, source: str, state: StudyState, space: SearchSpace, notes: list[str]
) -> tuple[SearchSpace, list[dict[str, Any]] | None, dict[str, Any], dict[str, Any]]:
    """(space, grid, hand-over record, fixed values) of a phase that starts from an earlier phase's trials."""
    if cfg.from_phase >= cfg.phase:
        raise UsageError(
            f"{source}: tune.from_phase = {cfg.from_phase} must name an earlier phase than tune.phase = {cfg.phase}"
        )
    previous = state.phase(cfg.from_phase)
    if not previous.measured():
        raise UsageError(
            f"{source}: phase {cfg.phase} hands over from phase {cfg.from_phase}, which has no completed "
            f"trials in this study; run `clipctl tune --phase {cfg.from_phase}` first"
        )
    if previous.running() or previous.closed is None:
        notes.append(
            f"phase {cfg.from_phase} is not finished ({len(previous.running())} running); "
            f"handing over from its {len(previous.measured())} completed trials"
        )
    if not cfg.grids_handover:
        best = previous.best()
        assert best is not None
        handover = {
            "from_phase": cfg.from_phase,
            "kind": "best",
            "trial": best.trial,
            "value": best.value,
            "params": best.params,
        }
        return space, None, handover, {**best.params, **cfg.fixed}
    for key in ("loss.name", "optim.name"):
        if key in space.names:
            raise UsageError(
                f"{source}: tune.space.{key}: set by phase {cfg.from_phase}'s top-{cfg.top_k} "
                f"combinations (tune.from_phase); remove it from the space"
            )
    combos = top_combos(previous, cfg.top_k)
    if len(combos) < cfg.top_k:
        notes.append(
            f"phase {cfg.from_phase} has only {len(combos)} (loss, optimizer) combinations; tune.top_k = {cfg.top_k}"
        )
    handover = {"from_phase": cfg.from_phase, "kind": "top_k", "combos": [[loss, opt, v] for loss, opt, v in combos]}
    losses = list(dict.fromkeys(loss for loss, _, _ in combos))
    optims = list(dict.fromkeys(o for _, o, _ in combos))
    inner = space.grid(source) if len(space) else [{}]
    space = SearchSpace([CatDim("loss.name", tuple(losses)), CatDim("optim.name", tuple(optims)), *space.dims])
    grid = [{"loss.name": loss, "optim.name": opt, **g} for loss, opt, _ in combos for g in inner]
    return space, grid, handover, dict(cfg.fixed)


def build_plan(tune: TuneRecipe, tune_path: Path, state: StudyState) -> PhasePlan:
    """Resolve a tune recipe into a plan (no side effects); hand-over reads the earlier phase's trials."""
    cfg = tune.tune
    source = str(tune_path)
    base = load_raw(tune_base_path(tune, tune_path))
    notes: list[str] = []
    combos_grid = cfg.grids_handover
    space = parse_space(cfg, source)
    if cfg.from_phase:
        space, grid, handover, fixed = _handover(cfg, source, state, space, notes)
    else:
        grid, handover, fixed = space.grid(source) if cfg.strategy == "grid" else None, {}, dict(cfg.fixed)

    probe = validate_recipe(merge_values(base, fixed), f"{source} (tune.fixed)", explicit_loss_keys=set())
    if "loss.name" not in space.names:
        unused = {n for n in space.names if not applies(n, probe.loss.name)}
        if unused:
            notes.append(
                f"tune.space: {', '.join(sorted(unused))} not read by loss {probe.loss.name!r}; left out of the search"
            )
            space = space.without(unused)
    if not len(space) and not combos_grid:
        raise UsageError(f"{source}: [tune.space] has no parameter that affects loss {probe.loss.name!r}; add one")
    space, grid, dropped = _drop_unrunnable(space, grid, source)
    if dropped:
        notes.append(
            f"tune.space: optim.name: dropped {', '.join(dropped['optim.name'])} ({dropped['reason']}); "
            f"recorded in study.toml"
        )
    if grid is not None:
        grid = _dedupe_grid(space, grid, probe.loss.name)
        if cfg.n_trials < len(grid):
            notes.append(f"tune.n_trials = {cfg.n_trials} < {len(grid)} grid points: only the first {cfg.n_trials} run")

    return PhasePlan(
        phase=cfg.phase,
        source=source,
        strategy=cfg.strategy,
        n_trials=cfg.n_trials,
        n_initial=cfg.n_initial,
        acq=cfg.acq,
        initial_point_generator=cfg.initial_point_generator,
        seed=cfg.seed,
        objective=cfg.objective,
        prune=cfg.prune,
        prune_grace_epochs=cfg.prune_grace_epochs,
        space=space,
        base=base,
        fixed=fixed,
        default_loss=probe.loss.name,
        default_optimizer=probe.optim.name,
        identity=recipe_identity(tune, tune_path)[0],
        grid=grid,
        handover=handover,
        notes=notes,
        dropped=dropped,
    )


def _drop_unrunnable(
    space: SearchSpace, grid: list[dict[str, Any]] | None, source: str
) -> tuple[SearchSpace, list[dict[str, Any]] | None, dict[str, Any]]:
    """The space (and grid) without optimizers this machine cannot run, and what was dropped (empty: none)."""
    from clipctl.train.optim import unavailable_optimizers

    dim = next((d for d in space.dims if d.name == "optim.name"), None)
    if not isinstance(dim, CatDim):
        return space, grid, {}
    gone = unavailable_optimizers([str(c) for c in dim.categories])
    if not gone:
        return space, grid, {}
    kept = tuple(c for c in dim.categories if c not in gone)
    if not kept:
        raise UsageError(
            f"{source}: tune.space.optim.name: none of {list(dim.categories)} can run here (they need "
            f'NVIDIA apex on a CUDA device); add e.g. "lamb" or "novograd"'
        )
    space = SearchSpace(CatDim(d.name, kept) if d is dim else d for d in space.dims)
    if grid is not None:
        grid = [point for point in grid if point.get("optim.name") not in gone]
    return space, grid, {"optim.name": gone, "reason": "need NVIDIA apex on a CUDA device, not available here"}


def _dedupe_grid(space: SearchSpace, grid: list[dict[str, Any]], default_loss: str) -> list[dict[str, Any]]:
    """Grid points that differ only in keys their loss ignores are one trial, not several."""
    seen, kept = set(), []
    for point in grid:
        point = {k: point[k] for k in space.names if k in point}
        told, _ = space.canonicalise(point, default_loss)
        key = tomli_w.dumps(told)
        if key not in seen:
            seen.add(key)
            kept.append(point)
    return kept


def open_phase(study: Study, tune: TuneRecipe, tune_path: Path) -> PhasePlan:
    """The phase's plan on record (checked against the recipe), freezing a new one if the phase is new."""
    phase = tune.tune.phase
    frozen = study.frozen_phase(phase)
    notes: list[str] = []
    if frozen is None:
        plan = build_plan(tune, tune_path, study.state())
        notes = plan.notes
        frozen = study.freeze_phase(phase, plan.frozen())
    check_identity(study, phase, frozen, recipe_identity(tune, tune_path), str(tune_path))
    study.set_trial_budget(phase, tune.tune.n_trials)
    plan = PhasePlan.from_frozen(phase, frozen, n_trials=tune.tune.n_trials)
    plan.notes = notes
    return plan


def load_plan(study: Study, phase: int) -> PhasePlan:
    frozen = study.frozen_phase(phase)
    if frozen is None:
        raise UsageError(
            f"{study.root}: phase {phase} has not started in this study (phases: "
            f"{', '.join(map(str, study.frozen_phases())) or 'none'})"
        )
    return PhasePlan.from_frozen(phase, frozen)
