"""`clipctl tune --dry-run`: trials × epochs × measured step time, before anything starts.

The step time is measured, not guessed: a representative trial recipe (the phase's base with its fixed
values) is run through `clipctl train RECIPE --dry-run --json`, which times a few real steps and prints
a JSON object with `seconds_per_step` and `steps_per_epoch`. If that fails, the estimate still gives
trials × epochs and says why the time is missing. The same dry run is the preflight of a real study:
a usage or data error there (exit 2 or 3) stops it before any trial is recorded.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipctl.errors import EXIT_DATA, EXIT_USAGE, DataError, UsageError
from clipctl.recipe import Recipe, load_raw, merge_values, validate_recipe
from clipctl.tune.phases import build_plan
from clipctl.tune.recipe import TuneRecipe, tune_base_path
from clipctl.tune.store import StudyState

DRY_RUN_TIMEOUT_S = 900


@dataclass
class Estimate:
    phase: int
    trials: int
    epochs: int
    max_steps: int  # train.max_steps cap (0: none)
    parallel: int
    steps_per_epoch: int | None = None
    seconds_per_step: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def steps_per_trial(self) -> int | None:
        if self.steps_per_epoch is None:
            return None
        steps = self.epochs * self.steps_per_epoch
        return min(steps, self.max_steps) if self.max_steps else steps

    @property
    def seconds(self) -> float | None:
        """Wall-clock estimate of the training steps (evaluation and pruning not counted)."""
        if self.steps_per_trial is None or self.seconds_per_step is None:
            return None
        return self.trials * self.steps_per_trial * self.seconds_per_step / self.parallel


def parse_dry_run(stdout: str) -> dict[str, Any] | None:
    """The trainer's dry-run JSON (a whole document or one line of it) with the two timing keys."""
    candidates = [stdout.strip()] + [line.strip() for line in reversed(stdout.splitlines())]
    for text in candidates:
        if not text.startswith("{"):
            continue
        try:
            data = json.loads(text)
        except ValueError:
            continue
        if isinstance(data, dict) and "seconds_per_step" in data and "steps_per_epoch" in data:
            return data
    return None


def _dry_run(recipe_toml: str, command: list[str]) -> tuple[subprocess.CompletedProcess | None, str]:
    """Run `command RECIPE --dry-run --json` on a temporary copy; (the finished process, "") or (None, why)."""
    with tempfile.TemporaryDirectory(prefix="clipctl-tune-dry-") as tmp:
        path = Path(tmp) / "trial.toml"
        path.write_text(recipe_toml, encoding="utf-8")
        program = [part.replace("{slot}", "0") for part in command]
        args = [*program, str(path), "--dry-run", "--json", "--out", tmp, "--name", "dry-run"]
        try:
            done = subprocess.run(
                args, capture_output=True, text=True, timeout=DRY_RUN_TIMEOUT_S, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            return None, f"`clipctl train --dry-run` took over {DRY_RUN_TIMEOUT_S} s"
        except OSError as err:
            return None, f"cannot run {args[0]!r}: {err.strerror}"
    return done, ""


def _last_line(done: subprocess.CompletedProcess) -> str:
    last = next((line for line in reversed((done.stderr or done.stdout).splitlines()) if line.strip()), "no output")
    return last.strip().removeprefix("clipctl: error: ")[:300]


def measure_step_time(recipe_toml: str, command: list[str]) -> tuple[dict[str, Any] | None, str]:
    """Run `command RECIPE --dry-run --json` on a temporary copy; (timing dict, "") or (None, why)."""
    done, why = _dry_run(recipe_toml, command)
    if done is None:
        return None, why
    data = parse_dry_run(done.stdout)
    if data is not None:
        seconds, steps = data["seconds_per_step"], data["steps_per_epoch"]
        if isinstance(seconds, (int, float)) and math.isfinite(seconds) and isinstance(steps, int):
            return data, ""
    return None, f"`clipctl train --dry-run --json` gave no step time (exit {done.returncode}: {_last_line(done)})"


def preflight(tune: TuneRecipe, tune_path: Path, state: StudyState, command: list[str]) -> None:
    """Before a study's first trial: its representative recipe through `clipctl train --dry-run`, which
    opens the datasets and builds the towers; a usage or data error there is the study's, raised before
    anything is recorded. Other failures (a slow or crashing dry run) are left to the trials."""
    build_plan(tune, tune_path, state)  # the phase's own checks first (e.g. a hand-over phase without results)
    recipe, _, _ = _representative(tune, tune_path, state)
    done, _ = _dry_run(recipe.to_toml(), command)
    if done is not None and done.returncode in (EXIT_USAGE, EXIT_DATA):
        error = UsageError if done.returncode == EXIT_USAGE else DataError
        raise error(
            f"phase {tune.tune.phase} preflight (`clipctl train --dry-run` of its base recipe): "
            f"{_last_line(done)}; no trial was started"
        )


def _representative(tune: TuneRecipe, tune_path: Path, state: StudyState) -> tuple[Recipe, int, list[str]]:
    """The recipe a phase's step time is measured on (its base, fixed values and first grid point), the
    phase's trial count and notes on both."""
    cfg = tune.tune
    notes: list[str] = []
    if cfg.from_phase and not state.phase(cfg.from_phase).measured():
        if cfg.strategy == "grid":
            lists = [len(v) for v in cfg.space.values() if isinstance(v, list)]
            trials = min(cfg.n_trials, cfg.top_k * math.prod(lists))
            notes.append(f"phase {cfg.from_phase} has no results yet: {trials} trials is an upper bound (top_k x grid)")
        else:
            trials = cfg.n_trials
            notes.append(f"phase {cfg.from_phase} has no results yet: step time measured on the base recipe")
        base = load_raw(tune_base_path(tune, tune_path))
        raw = merge_values(base, cfg.fixed)
        raw["run"] = {**raw.get("run", {}), "name": "dry-run"}
        recipe = validate_recipe(raw, f"{tune_path} (tune.fixed)", explicit_loss_keys=set())
    else:
        plan = build_plan(tune, tune_path, state)
        trials = plan.planned_trials()
        params = plan.canonicalise(plan.grid[0])[1] if plan.grid else {}
        recipe = plan.trial_recipe(params, "dry-run", "runs")
        notes += plan.notes
    return recipe, trials, notes


def estimate_phase(tune: TuneRecipe, tune_path: Path, state: StudyState, command: list[str], parallel: int) -> Estimate:
    """The phase's trial count (its grid, or n_trials) and the step time of its representative recipe."""
    cfg = tune.tune
    recipe, trials, notes = _representative(tune, tune_path, state)
    if cfg.prune:
        notes.append("pruning will stop some trials early")
    estimate = Estimate(cfg.phase, trials, recipe.train.epochs, recipe.train.max_steps, parallel, notes=notes)
    timing, why = measure_step_time(recipe.to_toml(), command)
    if timing is None:
        estimate.notes.append(why)
    else:
        estimate.seconds_per_step = float(timing["seconds_per_step"])
        estimate.steps_per_epoch = int(timing["steps_per_epoch"])
    return estimate
