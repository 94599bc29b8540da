"""Fabricate run directories as the trainer writes them (DESIGN.md run-directory contract), for tests of readers."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipctl.recipe import load_recipe

COCO_IMAGENET = ("eval.test_retrieval=coco-karpathy-test", "eval.test_zeroshot=imagenet-val")


def make_run(
    root: Path,
    name: str,
    *,
    loss: str = "isogclr_new",
    seed: int = 0,
    overrides: Sequence[str] = (),
    tr1: float = 0.30,
    ir1: float = 0.20,
    acc1: float = 0.50,
    status: str | None = "completed",
    epochs: int = 4,
    wall_time_s: float = 120.0,
    samples_per_s: float = 650.0,
    curve: Sequence[float] | None = None,
    summary_extra: dict[str, Any] | None = None,
) -> Path:
    """One run dir: resolved recipe.toml, metrics.jsonl (train + eval lines), summary.json (unless status is None)."""
    recipe = load_recipe(
        "quickstart",
        [
            f"loss.name={loss}",
            f"run.seed={seed}",
            f"run.name={name}",
            f"run.out_dir={json.dumps(str(root))}",
            *overrides,
        ],
    )
    run = root / name
    run.mkdir(parents=True)
    (run / "recipe.toml").write_text(recipe.to_toml(), encoding="utf-8")
    done = epochs if status == "completed" else max(epochs - 2, 1)
    curve = (
        list(curve)
        if curve is not None
        else [(tr1 + ir1 + acc1) / 3 * (0.6 + 0.4 * (e + 1) / epochs) for e in range(epochs)]
    )
    lines = []
    for epoch in range(done):
        step = (epoch + 1) * 156
        lines.append({"type": "train", "epoch": epoch, "step": step, "loss": 3.0 - epoch * 0.3, "lr": 1e-3})
        objective = curve[epoch]
        lines.append(
            {
                "type": "eval",
                "epoch": epoch,
                "step": step,
                "split": "val",
                "val/tr@1": tr1,
                "val/ir@1": ir1,
                "val/acc@1": acc1,
                "val/objective": objective,
            }
        )
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    if status is None:
        return run
    summary: dict[str, Any] = {
        "status": status,
        "name": name,
        "recipe_sha256": recipe.sha256(),
        "seed": seed,
        "loss": loss,
        "optimizer": recipe.optim.name,
        "epochs_planned": epochs,
        "epochs_completed": done,
        "steps": done * 156,
        "best_epoch": done - 1,
        "best": {"val/objective": curve[done - 1]},
        "wall_time_s": wall_time_s,
        "samples_per_s": samples_per_s,
        "error": None,
    }
    if status == "completed":
        summary["test"] = {
            "tr@1": tr1,
            "tr@5": min(1.0, tr1 * 2),
            "tr@10": min(1.0, tr1 * 2.5),
            "ir@1": ir1,
            "ir@5": min(1.0, ir1 * 2),
            "ir@10": min(1.0, ir1 * 2.5),
            "r_mean": 0.4,
            "acc@1": acc1,
            "acc@5": min(1.0, acc1 * 1.5),
            "objective": (tr1 + ir1 + acc1) / 3,
            "retrieval_source": recipe.eval.test_retrieval,
            "zeroshot_source": recipe.eval.test_zeroshot,
        }
    if status == "failed":
        summary["error"] = "RuntimeError: loss is NaN at step 212\n  (lower optim.lr)"
    summary.update(summary_extra or {})
    (run / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return run


# What a crash, a hostile user or a foreign tool can leave as a run's summary.json (compare must list, never die).
SPOILED_SUMMARIES = {
    "deep": "nested more than 32 levels deep",  # 100,000 nested arrays: past the JSON parser's recursion limit
    "huge": "over the 1.0 MiB limit",  # a 2 GiB sparse file: never read into memory
    "binary": "is not UTF-8 text",
    "fifo": "is not a regular file",  # a read would block forever
}


def spoil_summary(run: Path, how: str) -> Path:
    """Replace the run's summary.json by one of SPOILED_SUMMARIES; returns the run folder."""
    path = run / "summary.json"
    path.unlink()
    if how == "deep":
        path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    elif how == "huge":
        with open(path, "wb") as handle:
            handle.truncate(2 << 30)
    elif how == "binary":
        path.write_bytes(bytes(range(256)) * 16)
    elif how == "fifo":
        os.mkfifo(path)
    else:
        raise ValueError(how)
    return run


# A folder name with an ANSI escape, a newline, a bidi override, a byte that is not UTF-8 and what would be bad math
# for matplotlib, and how compare shows it.
HOSTILE_NAME = "evil\x1b[31mRED\nline\u202e\udcff$\\frac$"
HOSTILE_SHOWN = "evil\\x1b[31mRED\\nline\\u202e\\udcff$\\frac$"


def make_hostile_run(root: Path, **kwargs: Any) -> Path:
    """A completed run in a folder named HOSTILE_NAME (make_run's name becomes run.name, which must stay TOML)."""
    return make_run(root, "hostile", **kwargs).rename(root / HOSTILE_NAME)
