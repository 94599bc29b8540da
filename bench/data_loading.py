"""Images/s of the training loader (`build_train_loader` over `PairsDataset` with the train transform) on
`shapes` (64 px PNG) and on a folder of 256 px JPEGs, with 0, 1 and 2 workers. Both datasets are made in a
temporary folder. Prints the ratios and writes bench/results/data_loading.json.

    python bench/data_loading.py [--images 2048] [--batch-size 128] [--batches 12] [--workers 0 1 2]

Why it matters: the CPU quickstart must not be input-bound, and the 256 px JPEG numbers tell how many
workers a GPU run on CC3M needs to keep its accelerator busy. Target: the shapes loader with the quickstart's
one worker delivers at least as many images/s as the quickstart's training step consumes, measured here in
the same run (with augmentation on, which is stricter than the quickstart's `augment = false`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import check, write_result
from PIL import Image
from train_throughput import MODELS, build, make_batches, step

from clipctl.console import info, print_table
from clipctl.data.batch_plan import BatchPlan
from clipctl.data.datasets import PairsDataset
from clipctl.data.loader import build_train_loader
from clipctl.data.shapes import ShapesConfig, generate_shapes
from clipctl.data.text import train_wordpiece
from clipctl.data.transforms import train_transform

DATASETS = {"shapes": "shapes 64px png", "jpeg": "jpeg 256px"}


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
    plan = BatchPlan(batch_size)
    loader = build_train_loader(dataset, plan, seed=0, num_workers=workers, persistent_workers=workers > 0)
    iterator = iter(loader)
    next(iterator)  # warm-up: worker start, first decode
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        images, _, _ = next(iterator)
        seen += images.shape[0]
    elapsed = time.perf_counter() - start
    del iterator, loader
    return seen / elapsed


def training_samples_per_s(steps: int = 4) -> float:
    """Samples/s of the quickstart's training step (clip, in-memory batches): the rate the loader must keep up with."""
    recipe, model, loss, optimizer, batch = build("quickstart", "clip", num_samples=steps * MODELS["quickstart"][2])
    batches = make_batches(recipe, batch, steps)
    step(model, loss, optimizer, batches[0], epoch=0)  # warm-up
    start = time.perf_counter()
    for b in batches:
        step(model, loss, optimizer, b, epoch=0)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument(
        "--against", type=Path, help="a train_throughput JSON: compare the JPEG loader with its paper step"
    )
    parser.add_argument("--name", default="data_loading", help="result file name under bench/results/")
    args = parser.parse_args()
    if args.images < (args.batches + 1) * args.batch_size:
        parser.error("--images must cover (batches + 1) x batch-size")
    training_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the loader's own cost; workers are separate processes
    results = []
    with tempfile.TemporaryDirectory(prefix="clipctl-bench-") as tmp:
        root = Path(tmp)
        datasets = {}
        if "shapes" in args.datasets:
            generate_shapes(
                root,
                ShapesConfig(train_size=args.images, eval_images=10, zeroshot_val_per_class=1, zeroshot_per_class=1),
            )
            datasets[DATASETS["shapes"]] = (root / "shapes" / "train.json", 64)
        if "jpeg" in args.datasets:
            datasets[DATASETS["jpeg"]] = (make_jpegs(root / "jpeg256", args.images), 224)
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
    print_table(
        "training loader throughput (train transform, seeded per-sample augmentation)",
        ["dataset", "px out", "workers", "images/s", f"x vs {args.workers[0]} workers"],
        [
            (r["dataset"], r["output_px"], r["workers"], r["images_per_s"], r[f"ratio_vs_workers_{args.workers[0]}"])
            for r in results
        ],
    )
    torch.set_num_threads(training_threads)
    payload: dict = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
        },
        "settings": {"images": args.images, "batch_size": args.batch_size, "batches": args.batches},
        "results": results,
        "load": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
    }
    checks = []
    if len(datasets) == 2:
        shapes_best = max(r["images_per_s"] for r in results if r["dataset"] == DATASETS["shapes"])
        jpeg_best = max(r["images_per_s"] for r in results if r["dataset"] == DATASETS["jpeg"])
        info(f"shapes / jpeg throughput (best worker count each): {shapes_best / jpeg_best:.2f}x")
        payload["shapes_over_jpeg_best"] = round(shapes_best / jpeg_best, 2)
    if DATASETS["shapes"] in datasets:
        training = training_samples_per_s()
        one_worker = next(
            (r["images_per_s"] for r in results if r["dataset"] == DATASETS["shapes"] and r["workers"] == 1), None
        )
        ratio = None if one_worker is None else round(one_worker / training, 2)
        info(f"quickstart training step: {training:.0f} samples/s; shapes loader with 1 worker: {one_worker} images/s")
        payload.update(quickstart_training_samples_per_s=round(training, 1), loader_1_worker_over_training=ratio)
        checks.append(check("loader (1 worker) / training, samples/s", ratio, ">=", 1.0))
    if args.against is not None and DATASETS["jpeg"] in datasets:
        checks += data_wait(payload, results, json.loads(args.against.read_text()))
    write_result(args.name, payload, checks)


def data_wait(payload: dict, results: list[dict], throughput: dict) -> list[dict]:
    """Share of the paper-model step spent waiting for 256 px JPEGs: 1 − loader rate / step rate when the loader is
    the slower (0 when it keeps up), per worker count; the target is at most 5% with the best worker count."""
    step_rate = max(throughput["models"]["paper"]["samples_per_s"].values())
    waits = {
        r["workers"]: max(0.0, 1.0 - r["images_per_s"] / step_rate) for r in results if r["dataset"] == DATASETS["jpeg"]
    }
    for workers, wait in waits.items():
        info(
            f"jpeg 256px with {workers} workers: data wait {100 * wait:.1f}% of the paper step "
            f"({step_rate:.0f} samples/s, "
            f"{throughput['device']} {throughput['precision']})"
        )
    payload.update(
        paper_step_samples_per_s=step_rate,
        data_wait_share=waits,
        step_device=throughput["device"],
        step_precision=throughput["precision"],
    )
    best = min(waits, key=waits.get)
    return [check(f"data wait / paper step, jpeg 256px, {best} workers", waits[best], "<=", 0.05, unit="fraction")]


if __name__ == "__main__":
    main()
