"""Images/s of the training loader (`build_train_loader` over `PairsDataset` with the train transform) on
`shapes` (64 px PNG) and on a folder of 256 px JPEGs, with 0, 1 and 2 workers. Both datasets are made in a
temporary folder. Prints the ratios and writes bench/results/data_loading.json.

    python bench/data_loading.py [--images 2048] [--batch-size 128] [--batches 12] [--workers 0 1 2]

Why it matters: the CPU quickstart must not be input-bound, and the 256 px JPEG numbers tell how many
workers a GPU run on CC3M needs to keep its accelerator busy.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clipctl.data.datasets import PairsDataset  # noqa: E402
from clipctl.data.loader import build_train_loader  # noqa: E402
from clipctl.data.shapes import ShapesConfig, generate_shapes  # noqa: E402
from clipctl.data.text import train_wordpiece  # noqa: E402
from clipctl.data.transforms import train_transform  # noqa: E402
from clipctl.report.console import info, print_table  # noqa: E402


def make_jpegs(folder: Path, count: int) -> Path:
    """256x256 JPEGs with smooth random content (realistic compressed size, ~15-25 KB) and a pairs JSON."""
    rng = np.random.default_rng(0)
    entries = []
    (folder / "img").mkdir(parents=True)
    for i in range(count):
        small = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((256, 256), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        (folder / "img" / f"{i:06d}.jpg").write_bytes(buffer.getvalue())
        entries.append({"image": f"img/{i:06d}.jpg", "caption": f"a random picture number {i % 97}", "image_id": i})
    (folder / "pairs.json").write_text(json.dumps(entries))
    return folder / "pairs.json"


def images_per_second(dataset: PairsDataset, batch_size: int, batches: int, workers: int) -> float:
    loader = build_train_loader(dataset, batch_size, seed=0, num_workers=workers, persistent_workers=workers > 0)
    iterator = iter(loader)
    next(iterator)  # warm-up: worker start, first decode
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        images, _, _ = next(iterator)
        seen += images.shape[0]
    elapsed = time.perf_counter() - start
    del iterator, loader
    return seen / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    if args.images < (args.batches + 1) * args.batch_size:
        parser.error("--images must cover (batches + 1) x batch-size")
    torch.set_num_threads(1)  # the loader's own cost; workers are separate processes
    results = []
    with tempfile.TemporaryDirectory(prefix="clipctl-bench-") as tmp:
        root = Path(tmp)
        generate_shapes(root, ShapesConfig(train_size=args.images, eval_images=10, zeroshot_val_per_class=1, zeroshot_per_class=1))
        jpeg_pairs = make_jpegs(root / "jpeg256", args.images)
        datasets = {"shapes 64px png": (root / "shapes" / "train.json", 64), "jpeg 256px": (jpeg_pairs, 224)}
        for name, (source, size) in datasets.items():
            dataset = PairsDataset(source, train_transform(size), seed=0)
            dataset.tokenizer = train_wordpiece(dataset.captions, 500, 32)
            for workers in args.workers:
                rate = images_per_second(dataset, args.batch_size, args.batches, workers)
                results.append({"dataset": name, "output_px": size, "workers": workers, "images_per_s": round(rate, 1)})
                info(f"{name}: {workers} workers: {rate:.0f} images/s")
    base = {r["dataset"]: r["images_per_s"] for r in results if r["workers"] == args.workers[0]}
    for r in results:
        r["ratio_vs_workers_" + str(args.workers[0])] = round(r["images_per_s"] / base[r["dataset"]], 2)
    print_table("training loader throughput (train transform, seeded per-sample augmentation)",
                ["dataset", "px out", "workers", "images/s", f"x vs {args.workers[0]} workers"],
                [(r["dataset"], r["output_px"], r["workers"], r["images_per_s"], r[f"ratio_vs_workers_{args.workers[0]}"]) for r in results])
    shapes_best = max(r["images_per_s"] for r in results if r["dataset"].startswith("shapes"))
    jpeg_best = max(r["images_per_s"] for r in results if r["dataset"].startswith("jpeg"))
    info(f"shapes / jpeg throughput (best worker count each): {shapes_best / jpeg_best:.2f}x")
    payload = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__},
        "settings": {"images": args.images, "batch_size": args.batch_size, "batches": args.batches},
        "results": results, "shapes_over_jpeg_best": round(shapes_best / jpeg_best, 2),
        "note": "shared 2-core machine: absolute numbers vary with load; compare ratios",
    }
    out = ROOT / "bench" / "results" / "data_loading.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    info(f"wrote {out}")


if __name__ == "__main__":
    main()
