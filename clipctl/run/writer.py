"""Writing a run directory: claim it, start it (recipe, meta), append metrics, record the summary.

Everything but the metrics log is written atomically (clipctl.atomic): a kill leaves the old file or the
new one. Only the main process writes.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from clipctl.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from clipctl.console import info
from clipctl.doctor import package_versions
from clipctl.errors import ResumeError, RunConflictError, StorageError, UsageError
from clipctl.recipe import Recipe
from clipctl.run.layout import META_FILE, RunDir, RunStatus
from clipctl.run.reader import read_json, read_metrics


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: Path, payload: Any) -> None:
    """Atomically, with NaN/inf as null: the run files stay strict JSON for any reader."""
    atomic_write_json(path, _jsonable(payload), indent=2)


class RunClaim:
    """An exclusive lock on a run directory, held for the run's life: a second trainer on the same name
    fails at once (exit 4) instead of writing into the same files. Released when the process ends."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.created = False
        self._fd: int | None = None

    def acquire(self) -> RunClaim:
        parent = self.run.root.parent
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"--out {parent}: is a file, not a folder; pass a folder for the runs")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            try:
                self.run.root.mkdir()
                self.created = True
            except FileExistsError:
                if not self.run.root.is_dir():
                    raise UsageError(
                        f"{self.run.root}: is a file, not a run directory; choose another --name"
                    ) from None
            self._fd = os.open(self.run.lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StorageError.from_os_error(err) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise RunConflictError(
                f"{self.run.root}: another clipctl process is training this run; "
                f"wait for it or choose --name/--out for a new run"
            ) from None
        return self

    def release(self, *, failed_before_start: bool = False) -> None:
        """Drop the lock; a folder this claim created and nothing was written to is removed again."""
        if self._fd is None:
            return
        if failed_before_start and self.created and not self.run.has_content():
            self.run.lock.unlink(missing_ok=True)
            self.run.root.rmdir()
        os.close(self._fd)
        self._fd = None


def remove_stale_temps(run: RunDir) -> None:
    """Temp files of atomic writes a kill interrupted (`.NAME.XXXX.tmp`, the size of a state each)."""
    for folder in (run.root, run.state_dir, run.checkpoints_dir):
        for path in folder.glob(".*.tmp") if folder.is_dir() else ():
            path.unlink(missing_ok=True)


def clear_unsaved_attempt(run: RunDir) -> None:
    """Before a run stopped ahead of its first state save starts over in place (`--resume restart`): what
    that attempt wrote beyond the files every start rewrites (recipe, meta, metrics, summary) goes, so no
    best checkpoint, TensorBoard event or eval result of it passes for the new attempt's."""
    run.checkpoint.unlink(missing_ok=True)
    for folder in (run.state_dir, run.tensorboard, run.eval_dir):
        if folder.is_dir():
            shutil.rmtree(folder)


def build_meta(
    recipe: Recipe, world_size: int, device: str, precision: str, chosen_by: dict[str, str] | None = None
) -> dict[str, Any]:
    """meta.json of a start: what produced the run (the command line and the machine), so a result can be traced
    and repeated; `chosen_by` says where the device and precision came from (recipe, launcher or auto)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = None
    versions = package_versions()
    return {
        "versions": versions,
        "git_sha": sha,
        "world_size": world_size,
        "device": device,
        "precision": precision,
        "host": platform.node(),
        "argv": list(sys.argv),
        "environment": {
            "python": versions["python"],
            "torch": versions.get("torch"),
            "clipctl": versions["clipctl"],
            "platform": platform.platform(),
            "device": device,
            "world_size": world_size,
            "precision": precision,
            **(chosen_by or {}),
        },
        "recipe_sha256": recipe.sha256(),
        "start": datetime.now(timezone.utc).isoformat(),
        "end": None,
    }


def stored_meta(run: RunDir, fresh: dict[str, Any]) -> dict[str, Any]:
    """meta.json of the run being resumed; a torn one (kill mid-write by an old version) is rebuilt."""
    try:
        return read_json(run.meta, META_FILE)
    except ResumeError as err:
        info(f"{err}; writing a new one")
        return fresh


def start_run(run: RunDir, recipe: Recipe, meta: dict[str, Any], *, resumed_at: tuple[int, int] | None) -> None:
    """Write the resolved recipe and meta.json; a resume (`resumed_at` = (step, epoch) of its state) keeps the
    first start's meta and the metrics logged before that state, a fresh start begins an empty log."""
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.recipe, f"# resolved recipe; sha256 {recipe.sha256()}\n{recipe.to_toml()}")
    if resumed_at is not None and run.meta.is_file():
        # the first start's meta, and this start's command line and machine (a run may move between machines)
        this_start = {key: meta[key] for key in ("argv", "environment", "start") if key in meta}
        meta = {**stored_meta(run, meta), "resumed_at_step": resumed_at[0], "resumed": this_start, "end": None}
    write_json(run.meta, meta)
    if resumed_at is not None:
        truncate_metrics(run, *resumed_at)
    elif run.metrics.exists():
        run.metrics.unlink()


def append_metrics(run: RunDir, record: dict[str, Any]) -> None:
    """One line of metrics.jsonl (appended, not atomic: a reader drops a torn last line)."""
    try:
        with run.metrics.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(_jsonable(record), sort_keys=True) + "\n")
    except OSError as err:  # a full disk fails the write or the close, which name no file
        err.filename = err.filename or str(run.metrics)
        raise


def truncate_metrics(run: RunDir, last_step: int, epoch: int) -> None:
    """Drop records logged after the state we resume from, so a resumed log equals an uninterrupted one.

    The state sits at update `last_step` of epoch `epoch` (still to be validated when it was saved
    mid-epoch): an eval of that epoch at that update came after the state and is redone, as is the
    final test pass.
    """

    def before(r: dict[str, Any]) -> bool:
        if r.get("type") == "test":
            return False
        step = r.get("step", 0)
        return step < last_step or (step == last_step and (r.get("type") != "eval" or r.get("epoch", 0) < epoch))

    kept = [r for r in read_metrics(run) if before(r)]
    atomic_write_bytes(run.metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept).encode())


class TrainingProgress(Protocol):
    """The trainer's bookkeeping a summary reports."""

    epoch: int
    step: int
    best_epoch: int | None
    best_metrics: dict[str, float]
    samples_seen: int
    train_seconds: float


def build_summary(
    status: RunStatus,
    recipe: Recipe,
    progress: TrainingProgress,
    *,
    world_size: int,
    train_subset: Any,
    sample_identity: str | None = None,
    error: str | None = None,
    test: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """summary.json: the status, the best and final metrics and the speed, as compare and tune read them."""
    p = progress
    summary = {
        "status": status.value,
        "name": recipe.run.name,
        "recipe_sha256": recipe.sha256(),
        "seed": recipe.run.seed,
        "loss": recipe.loss.name,
        "optimizer": recipe.optim.name,
        "epochs_planned": recipe.train.epochs,
        "epochs_completed": p.epoch,
        "steps": p.step,
        "best_epoch": p.best_epoch,
        "best": p.best_metrics,
        "wall_time_s": p.train_seconds,
        "samples_per_s": p.samples_seen / p.train_seconds if p.train_seconds > 0 else None,
        "world_size": world_size,
        "selected_on": recipe.eval.select_on,
        "train_subset": train_subset,
        "sample_identity": sample_identity,
        "error": error,
    }
    if test is not None:
        summary["test"] = test
    return summary


def write_summary(run: RunDir, summary: dict[str, Any]) -> None:
    """Write summary.json; a final status also stamps meta.json's `end`. Nothing when the run dir is gone."""
    if not run.root.is_dir():
        return
    write_json(run.summary, summary)
    if summary["status"] != RunStatus.RUNNING and run.meta.is_file():
        meta = stored_meta(run, {})
        meta["end"] = datetime.now(timezone.utc).isoformat()
        write_json(run.meta, meta)
