"""Locked-tower training: projections on cached tower features vs the full forward every step.

Both towers locked (the quickstart towers, from scratch: the speed does not depend on the weights), one
epoch of `shapes` through the real trainer, once with `model.cache_locked_features = true` and once with
false, alternating over `--rounds` so the machine's load hits both alike. The ratio compares the training
steps (summary `wall_time_s`); the one-off cost of computing the cache is reported beside it. Target:
cached training at least 5x faster. Writes bench/results/cached_features.json.

    python bench/cached_features.py [--train-size 2048] [--batch 128] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import check, info, write_result

from clipctl.data.shapes import ShapesConfig, generate_shapes
from clipctl.recipe import load_recipe, override_args
from clipctl.train.trainer import TrainOptions, train

TARGET_SPEEDUP = 5.0


def one_run(shapes: Path, out: Path, name: str, cached: bool, batch: int) -> dict[str, float]:
    overrides = override_args(
        {
            "data.train": str(shapes / "train.json"),
            "eval.val_retrieval": str(shapes / "val.json"),
            "eval.val_zeroshot": str(shapes / "zeroshot_val"),
            "eval.test_retrieval": str(shapes / "test.json"),
            "eval.test_zeroshot": str(shapes / "zeroshot"),
            "train.epochs": 1,
            "train.batch_size": batch,
            "model.lock_image": True,
            "model.lock_text": True,
            "model.cache_locked_features": cached,
            "loss.name": "sogclr",
            "loss.temperature": 0.05,
            "data.num_workers": 0,
        }
    )
    start = time.perf_counter()
    summary = train(load_recipe("quickstart", overrides), TrainOptions(out_dir=out, name=name))
    return {"steps_s": summary["wall_time_s"], "total_s": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = ShapesConfig(
            seed=0,
            train_size=args.train_size,
            image_size=64,
            eval_images=200,
            zeroshot_val_per_class=1,
            zeroshot_per_class=1,
        )
        generate_shapes(root / "data", config, workers=1)
        shapes = root / "data" / "shapes"
        runs: dict[str, list[dict[str, float]]] = {"cached": [], "uncached": []}
        for k in range(args.rounds):
            for mode in ("cached", "uncached") if k % 2 == 0 else ("uncached", "cached"):
                runs[mode].append(one_run(shapes, root / "runs", f"{mode}-{k}", mode == "cached", args.batch))
    median = {
        mode: {key: statistics.median(r[key] for r in rs) for key in ("steps_s", "total_s")}
        for mode, rs in runs.items()
    }
    speedup = median["uncached"]["steps_s"] / median["cached"]["steps_s"]
    end_to_end = median["uncached"]["total_s"] / median["cached"]["total_s"]
    info(
        f"training steps: cached {median['cached']['steps_s']:.2f} s, uncached {median['uncached']['steps_s']:.2f} s "
        f"-> {speedup:.1f}x; whole run incl. cache and evaluation {end_to_end:.2f}x"
    )
    payload = {
        "train_size": args.train_size,
        "batch": args.batch,
        "rounds": args.rounds,
        "median": median,
        "runs": runs,
        "speedup_steps": speedup,
        "speedup_whole_run": end_to_end,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "load": Path("/proc/loadavg").read_text().split()[:3],
    }
    write_result("cached_features", payload, [check("uncached / cached training steps", speedup, ">=", TARGET_SPEEDUP)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
