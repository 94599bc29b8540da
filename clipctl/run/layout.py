"""The names of a run directory (DESIGN.md "Run directory") and the status values its summary.json holds.

Every command that writes or reads a run takes the names from here, so the contract has one spelling.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from clipctl.errors import UsageError

RECIPE_FILE = "recipe.toml"
META_FILE = "meta.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "ckpt.pt"
STATE_DIR = "state"
LAST_STATE_FILE = "last.pt"
TENSORBOARD_DIR = "tb"
LOG_FILE = "train.log"  # the console output of every start, plain text
CHECKPOINTS_DIR = "checkpoints"  # epoch_N.pt (after N epochs) and epoch_latest.pt, with train.save_every_epochs
LATEST_EPOCH_FILE = "epoch_latest.pt"
EVAL_DIR = "eval"  # `clipctl eval` writes eval/<benchmark>.json beside the checkpoint
LOCK_NAME = ".lock"
# A folder holding either file is a run directory (a run killed before its first summary has only the recipe).
RUN_MARKERS = (RECIPE_FILE, SUMMARY_FILE)
MAX_NAME_BYTES = 255  # one path component on every common file system


class RunStatus(str, Enum):
    """`status` in summary.json: what the trainer last said about the run."""

    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    RUNNING = "running"

    def __str__(self) -> str:  # the bare value in messages and tables, on every Python version
        return self.value


class RunProblem(str, Enum):
    """What a reader calls a run directory whose files give no trainer status it can trust."""

    CORRUPT = "corrupt"
    INCOMPLETE = "incomplete"

    def __str__(self) -> str:
        return self.value


def check_run_name(name: str) -> None:
    """A run name is one folder name: no separators, not `.`/`..`, short enough for the file system."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UsageError(f"run name {name!r}: must be one folder name (no '/'); pass --name NAME")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise UsageError(f"run name of {len(name.encode())} bytes: at most {MAX_NAME_BYTES}; pass a shorter --name")


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory; nothing is read or written here."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / RECIPE_FILE

    @property
    def meta(self) -> Path:
        return self.root / META_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT_FILE

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def last_state(self) -> Path:
        return self.state_dir / LAST_STATE_FILE

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD_DIR

    @property
    def log(self) -> Path:
        return self.root / LOG_FILE

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    def epoch_checkpoint(self, epochs_done: int) -> Path:
        return self.checkpoints_dir / f"epoch_{epochs_done}.pt"

    @property
    def latest_epoch_checkpoint(self) -> Path:
        return self.checkpoints_dir / LATEST_EPOCH_FILE

    def epoch_checkpoints(self) -> dict[int, Path]:
        """The numbered epoch checkpoints on disk, by the number of epochs done when each was written."""
        found = {}
        for path in self.checkpoints_dir.glob("epoch_*.pt") if self.checkpoints_dir.is_dir() else ():
            number = path.stem.removeprefix("epoch_")
            if number.isdigit():
                found[int(number)] = path
        return dict(sorted(found.items()))

    @property
    def eval_dir(self) -> Path:
        return self.root / EVAL_DIR

    @property
    def lock(self) -> Path:
        return self.root / LOCK_NAME

    def has_content(self) -> bool:
        """Anything besides the claim's lock file: a run was started here."""
        return self.root.is_dir() and any(p.name != LOCK_NAME for p in self.root.iterdir())

    def is_run(self) -> bool:
        """The folder holds a run's recipe or summary (what compare and tune look for)."""
        return any((self.root / marker).is_file() for marker in RUN_MARKERS)
