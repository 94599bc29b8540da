"""Test doubles for `clipctl tune`: a fake trainer (run as a script) and study helpers.

As a script it accepts what the tuner passes to `clipctl train` (and ignores a `-m clipctl train` prefix,
so it can stand in as `--launcher "python tests/helpers/tune_fakes.py"`). It writes `metrics.jsonl` and
`summary.json` per the run-directory contract from a synthetic objective of the recipe's values:
  objective = 0.6 - 0.1 * (log10(optim.lr) + 3)^2 + small per-optimizer/loss offsets
so `optim.lr` clearly matters and `optim.weight_decay` does not. `optim.name = "rmsprop"` crashes,
`"momentum"` diverges (NaN objective); $FAKE_EPOCH_SLEEP slows epochs; SIGTERM exits 130.
$FAKE_RMSPROP_FIXED stops the rmsprop crash; $FAKE_NEEDS_FILE naming a missing file is a data error
(exit 3); $FAKE_DISK_ERROR is printed as the trainer's last line (`{run}`: the run folder) and exits 1, as a
trainer does when its disk fails. A leading `--slot=N` argument (a launcher's `{slot}`), $CUDA_VISIBLE_DEVICES
and $OMP_NUM_THREADS are recorded in summary.json.
Only the standard library is imported at module level: every trial starts a fresh interpreter.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

HERE = Path(__file__).resolve()
OPTIM_BONUS = {"radam": 0.03, "adamw": 0.02, "adam": 0.01}
LOSS_BONUS = {"isogclr_new": 0.01}


def synthetic_objective(recipe: dict) -> float:
    lr = recipe["optim"]["lr"]
    value = 0.6 - 0.1 * (math.log10(lr) + 3) ** 2
    return value + OPTIM_BONUS.get(recipe["optim"]["name"], 0.0) + LOSS_BONUS.get(recipe["loss"]["name"], 0.0)


def fake_train(argv: list[str]) -> int:
    slot = argv.pop(0).removeprefix("--slot=") if argv and argv[0].startswith("--slot=") else None
    if argv[:3] == ["-m", "clipctl", "train"]:
        argv = argv[3:]
    needs = os.environ.get("FAKE_NEEDS_FILE")
    if needs and not Path(needs).exists():  # a dataset that is not there yet: the trainer's exit 3
        print(f"clipctl: error: {needs}: dataset missing; run `clipctl data fetch`", file=sys.stderr)
        return 3
    if "--dry-run" in argv:
        print(json.dumps({"seconds_per_step": 0.25, "steps_per_epoch": 40}))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    return train_run(Path(argv[0]), Path(argv[argv.index("--out") + 1]), argv[argv.index("--name") + 1], slot)


def train_run(recipe_path: Path, out: Path, name: str, slot: str | None = None) -> int:
    """The fake training itself: metrics.jsonl and summary.json of the run `out/name`; returns the exit code."""
    recipe = tomllib.loads(recipe_path.read_text(encoding="utf-8"))
    run = out / name
    run.mkdir(parents=True, exist_ok=True)
    disk_error = os.environ.get("FAKE_DISK_ERROR")
    if disk_error:  # the disk fails under the trainer: its one-line error (as clipctl train prints it) or a raw OSError
        print(disk_error.replace("{run}", str(run)), file=sys.stderr)
        return 1
    optimizer, epochs = recipe["optim"]["name"], recipe["train"]["epochs"]
    if optimizer == "rmsprop" and not os.environ.get("FAKE_RMSPROP_FIXED"):
        print("RuntimeError: boom (fake crash)", file=sys.stderr)
        return 1
    final = synthetic_objective(recipe)
    metrics = run / "metrics.jsonl"
    done = sum(1 for line in metrics.read_text().splitlines() if '"eval"' in line) if metrics.exists() else 0
    best = None
    for epoch in range(epochs):
        value = None if optimizer == "momentum" else final * (epoch + 1) / epochs
        if epoch >= done:
            time.sleep(float(os.environ.get("FAKE_EPOCH_SLEEP", "0")))
            with metrics.open("a") as handle:
                handle.write(
                    json.dumps(
                        {"type": "eval", "epoch": epoch, "step": epoch + 1, "split": "val", "val/objective": value}
                    )
                    + "\n"
                )
        if value is not None:
            best = value if best is None else max(best, value)
    summary = {
        "status": "completed",
        "name": name,
        "epochs_planned": epochs,
        "epochs_completed": epochs,
        "best": {"val/objective": best},
        "loss": recipe["loss"]["name"],
        "optimizer": optimizer,
        "error": None,
        "slot": slot,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return 0


# ----------------------------------------------------------------------------- helpers for tests

BASE_RECIPE = """\
[loss]
name = "sogclr"
[optim]
name = "adamw"
lr = 1e-3
[sched]
warmup_epochs = 0
[train]
epochs = 3
"""


def storage_url(kind: str, folder: Path) -> str | None:
    """A test storage: None (the study's journal file) or a SQLite URL for a database in `folder`."""
    return None if kind == "journal" else f"sqlite:///{folder / 'optuna.db'}"


def grid_recipe(optimizers: list[str], epochs: int = 2, lrs: tuple[float, ...] = (1e-3,), prune: bool = False) -> str:
    """A phase-1 grid over optimizers x learning rates, every trial `epochs` long (TOML text)."""
    names = ", ".join(f'"{name}"' for name in optimizers)
    return (
        '[tune]\nbase = "base.toml"\nphase = 1\nstrategy = "grid"\nn_trials = 10\n'
        + ("" if prune else "prune = false\n")
        + f'[tune.fixed]\n"train.epochs" = {epochs}\n'
        + f'[tune.space]\n"optim.name" = [{names}]\n"optim.lr" = [{", ".join(map(str, lrs))}]\n'
    )


def write_recipes(folder: Path, tune: str, name: str = "tune.toml") -> Path:
    """A base recipe and a tune recipe (the `[tune]` table text) in `folder`; returns the tune recipe."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.toml").write_text(BASE_RECIPE)
    path = folder / name
    path.write_text(tune)
    return path


def fake_command() -> list[str]:
    return [sys.executable, str(HERE)]


def launcher() -> str:
    """The fake trainer as a `--launcher` value for CLI tests."""
    return f"{sys.executable} {HERE}"


class _Finished:
    """A trial process that has already exited."""

    def __init__(self, code: int) -> None:
        self.code = code

    def poll(self) -> int:
        return self.code

    def terminate(self) -> None:
        return None

    def kill(self) -> None:
        return None


class InProcessRunner:
    """Trains each trial with the fake trainer inside this process, finished as soon as it starts: a fault
    test that resumes a study hundreds of times cannot start an interpreter per trial."""

    def devices(self, slot: int) -> list[str]:
        return []

    def start(self, launch, slot: int) -> _Finished:
        return _Finished(train_run(launch.recipe, launch.out_dir, launch.name))


def run_worker(
    study_dir: str, tune_path: str, parallel: int = 1, storage: str | None = None, heartbeat_s: float = 30.0
) -> None:
    """Run one worker on a phase with the fake trainer (used in-process and by subprocess workers);
    `storage` None is the study folder's journal file."""
    from clipctl.tune.phases import open_phase
    from clipctl.tune.recipe import load_tune_recipe
    from clipctl.tune.runner import PhaseWorker, SubprocessRunner
    from clipctl.tune.store import Study

    tune, path = load_tune_recipe(tune_path)
    study = Study(Path(study_dir), storage=storage, heartbeat_s=heartbeat_s)
    plan = open_phase(study, tune, path)
    runner = SubprocessRunner(fake_command(), parallel=parallel, gpus=[])
    PhaseWorker(study, plan, runner, parallel=parallel, log=lambda line: None).run()


def worker_main(argv: list[str]) -> int:
    """`--worker STUDY TUNE PARALLEL STORAGE HEARTBEAT_S`: a worker process; its study error is one line and
    its exit code, as `clipctl tune` reports it."""
    from clipctl.errors import ClipctlError

    try:
        run_worker(argv[0], argv[1], int(argv[2]), argv[3] or None, float(argv[4]))
    except ClipctlError as err:
        print(f"clipctl: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(worker_main(sys.argv[2:]))
    else:
        sys.exit(fake_train(sys.argv[1:]))
