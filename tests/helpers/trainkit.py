"""Helpers for trainer tests: a tiny `shapes` dataset made once per session and a tiny recipe over it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clipctl.data.shapes import ShapesConfig, generate_shapes
from clipctl.recipe import Recipe, load_recipe, override_args

TINY_SHAPES = ShapesConfig(
    seed=0, train_size=256, image_size=32, eval_images=48, zeroshot_val_per_class=1, zeroshot_per_class=1
)

TIMING_KEYS = ("_per_s", "_share", "wall_time", "seconds")
QUICK = {"train.epochs": 1, "train.max_steps": 2}  # two updates
ONE = {"train.epochs": 1, "train.max_steps": 0}  # 8 updates, one eval, one test pass; saves after the epoch


def make_tiny_shapes(root: Path, config: ShapesConfig = TINY_SHAPES) -> Path:
    generate_shapes(root, config, workers=1)
    return root / "shapes"


def tiny_overrides(shapes: Path, **extra: Any) -> list[str]:
    """Quickstart shrunk to seconds: 32-px images, 8 updates per epoch, deterministic CPU."""
    values: dict[str, Any] = {
        "data.train": str(shapes / "train.json"),
        "eval.val_retrieval": str(shapes / "val.json"),
        "eval.val_zeroshot": str(shapes / "zeroshot_val"),
        "eval.test_retrieval": str(shapes / "test.json"),
        "eval.test_zeroshot": str(shapes / "zeroshot"),
        "data.image_size": 32,
        "data.num_workers": 0,
        "model.embed_dim": 32,
        "model.vocab_size": 200,
        "train.batch_size": 32,
        "train.epochs": 2,
        "train.deterministic": True,
        "train.precision": "no",  # float32 on every CPU: no expectation depends on the machine's bf16 support
        "tracking.log_every_steps": 2,
        "eval.batch_size": 64,
    }
    values.update(extra)
    return override_args(values)


def train_args(shapes: Path, out: Path, name: str, **extra: Any) -> list[str]:
    """`clipctl train` arguments of a two-update run (QUICK) over the tiny shapes, updated by `extra`."""
    return ["train", "quickstart", *tiny_overrides(shapes, **{**QUICK, **extra}), "--out", str(out), "--name", name]


def tiny_recipe(shapes: Path, **extra: Any) -> Recipe:
    return load_recipe("quickstart", tiny_overrides(shapes, **extra))


def stable_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the timing fields, which legitimately differ between runs."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING_KEYS)} for r in records]


def state_tensors(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Every tensor in a nested state dict, by dotted path (the loss keeps its per-sample state nested)."""
    import torch

    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        found: dict[str, Any] = {}
        for key, value in tree.items():
            found.update(state_tensors(value, f"{prefix}.{key}" if prefix else str(key)))
        return found
    return {}


def pretend_cpu(monkeypatch: Any, avx512_bf16: bool, amx: bool = False) -> None:
    """What torch's CPU probe answers: the bf16 matrix instructions of the machine being pretended."""
    import torch

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
