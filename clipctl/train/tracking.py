"""Experiment trackers through Accelerate's `log_with`: TensorBoard, Weights & Biases and MLflow.

metrics.jsonl is the run's own record and is always written; each tracker `tracking.report_to` names (or the
older `tracking.tensorboard = true`) receives the same numbers at the same update, named `type/key`
(`train/loss`, `eval/val/tr@1`, `test/acc@1`). TensorBoard writes into the run's `tb/` as it always did; W&B
keeps its files under the run folder (unless WANDB_DIR says otherwise) and continues one W&B run across the
run's resumes; MLflow logs to its configured tracking URI (MLFLOW_TRACKING_URI), one MLflow run per start,
tagged with the clipctl run's id. W&B and MLflow are optional extras (`pip install clipctl[wandb]`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Callable
from typing import Any

from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, WandBTracker

from clipctl.errors import UsageError
from clipctl.recipe import Recipe, TrackingConfig
from clipctl.run.layout import TENSORBOARD_DIR, RunDir

# tracker -> (the module it needs, what installs it)
REQUIREMENTS = {
    "tensorboard": ("tensorboard", "clipctl"),
    "wandb": ("wandb", "clipctl[wandb]"),
    "mlflow": ("mlflow", "clipctl[mlflow]"),
}
DEFAULT_PROJECT = "clipctl"


def chosen_trackers(cfg: TrackingConfig) -> list[str]:
    """`tracking.report_to`, plus TensorBoard where the older `tracking.tensorboard = true` asks for it."""
    names = list(cfg.report_to or [])
    if cfg.tensorboard and "tensorboard" not in names:
        names.insert(0, "tensorboard")
    return list(dict.fromkeys(names))


def check_installed(names: list[str]) -> None:
    """A tracker whose package is missing is refused before anything starts (Accelerate would drop it silently)."""
    for name in names:
        module, extra = REQUIREMENTS[name]
        if importlib.util.find_spec(module) is None:
            raise UsageError(
                f"tracking.report_to includes {name!r}, but {module} is not installed; pip install {extra} "
                f"(or drop {name!r} from tracking.report_to)"
            )


class MLflowNames(MLflowTracker):
    """MLflow takes only letters, digits and `_-. /:` in a metric name: `tr@1` is logged as `tr_at_1`."""

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        super().log({mlflow_name(key): value for key, value in values.items()}, step=step, **kwargs)


def mlflow_name(key: str) -> str:
    return re.sub(r"[^\w.\- /:]", "_", key.replace("@", "_at_"))


def build_trackers(names: list[str], recipe: Recipe, run: RunDir, run_id: str) -> list[GeneralTracker]:
    """The trackers as Accelerate's `log_with` takes them; nothing is written until `Accelerator.init_trackers`.

    `run_id` names the clipctl run across its resumes (kept in meta.json): W&B continues that run, MLflow tags
    each start's run with it."""
    project = recipe.tracking.project or DEFAULT_PROJECT
    name = recipe.run.name
    made: dict[str, Callable[[], GeneralTracker]] = {
        "tensorboard": lambda: TensorBoardTracker(TENSORBOARD_DIR, run.root),
        "wandb": lambda: WandBTracker(
            project,
            name=name,
            id=run_id,
            resume="allow",
            dir=None if os.environ.get("WANDB_DIR") else str(run.root),
        ),
        "mlflow": lambda: MLflowNames(experiment_name=project, run_name=name, tags={"clipctl.run_id": run_id}),
    }
    return [made[tracker]() for tracker in names]


def tracked_values(record: dict[str, Any]) -> dict[str, float]:
    """A metrics record's numbers as tracker scalars: `type/key`, the epoch and step left to the step axis."""
    return {
        f"{record['type']}/{key}": value
        for key, value in record.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "step")
    }


def flat_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe as `table.key` values (lists as text), the run configuration W&B and MLflow show."""
    flat = {}
    for section, table in recipe.to_dict().items():
        for key, value in table.items():
            flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def start_trackers(accelerator: Accelerator, recipe: Recipe) -> None:
    """Open the trackers (main process); W&B and MLflow also get the recipe as their run configuration (TensorBoard
    gets none: its folder stays as it always was, scalars only)."""
    accelerator.init_trackers(recipe.tracking.project or DEFAULT_PROJECT)
    config = flat_recipe(recipe)
    for tracker in accelerator.trackers:
        if tracker.name != "tensorboard":
            tracker.store_init_configuration(config)


def finish_trackers(accelerator: Accelerator) -> None:
    """Flush and close every tracker, whatever ended the run (not `end_training`, which also ends the process group
    a script may train further runs in)."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()


def stored_run_id(run: RunDir) -> str | None:
    """The id an earlier start of this run recorded in meta.json (unreadable or absent: None, a fresh id)."""
    try:
        meta = json.loads(run.meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    run_id = meta.get("run_id") if isinstance(meta, dict) else None
    return run_id if isinstance(run_id, str) and re.fullmatch(r"[0-9a-f]{16}", run_id) else None
