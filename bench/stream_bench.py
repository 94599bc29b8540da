"""Training on WebDataset shards where they live: start-up with a count table against today's scan, streaming
samples/s against the map-style reader on local shards and over HTTP, and peak memory per process against the
dataset size. Everything is served locally: an HTTP server on 127.0.0.1 (a thread) and fsspec's memory backend.
Prints the ratios and writes bench/results/stream_bench.json with /proc/loadavg before and after.

    python bench/stream_bench.py [--samples 100000] [--shard-size 1000] [--loader-samples 4096] [--batch 64]

1. start-up: numbering `--samples` samples in `--samples / --shard-size` shards (img2dataset-style, `_stats.json`
   beside each): the map-style reader's scan (`clipctl.data.webdataset.scan_shards`, what every process does
   today) against the count table (`clipctl.data.shardindex.count_table`, no shard read). Target >= 50x.
2. throughput: one epoch of `--loader-samples` 64-px shapes-like PNG samples through the training transform and
   batching, main-process loading (data.num_workers = 0): the streaming reader against the map-style reader on the
   same local shards (target >= 0.9x), and the streaming reader over HTTP and over fsspec's memory backend against
   local streaming (target >= 0.9x: within 10%). Both readers' rates are of a later epoch: the map-style reader
   walks the tar headers once when it opens, the streaming reader on a shard's first read, local or remote (its
   members are then kept under the data root). The first epochs (the map-style one with its scan) are reported
   beside.
3. memory: a fresh process opens the training set of N samples and reads 4 batches, for the map-style reader and the
   streaming reader, at N = `--samples` / 10 and `--samples`: its peak RSS (mostly torch's import) and how much its
   resident set grew over the imports'. Target: streaming's growth at the larger N <= 1.1x the smaller's
   (independent of N).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import numpy as np
from _common import check, write_result
from PIL import Image

from clipctl.console import info, print_table
from clipctl.data.batch_plan import BatchPlan
from clipctl.data.datasets import PairsDataset
from clipctl.data.loader import build_train_loader
from clipctl.data.shardindex import count_table
from clipctl.data.shards import expand_source
from clipctl.data.streaming import StreamingPairs, StreamPlan, StreamSettings, stream_loader
from clipctl.data.text import train_wordpiece
from clipctl.data.transforms import train_transform
from clipctl.data.webdataset import scan_shards


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unavailable"


def png(seed: int, size: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((size, size), Image.Resampling.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(folder: Path, samples: int, shard_size: int, image_px: int, distinct_images: int) -> None:
    """img2dataset-style shards: NNNNN.tar (.png + .txt + .json key) and NNNNN_stats.json beside each."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    images = [png(i, image_px) for i in range(distinct_images)]
    for shard, start in enumerate(range(0, samples, shard_size)):
        count = min(shard_size, samples - start)
        with wds.TarWriter(str(folder / f"{shard:05d}.tar"), encoder=False) as sink:
            for key in range(start, start + count):
                sink.write(
                    {
                        "__key__": f"{key:09d}",
                        "png": images[key % distinct_images],
                        "txt": f"a picture of shape number {key % 97}".encode(),
                        "json": json.dumps({"key": key}).encode(),
                    }
                )
        (folder / f"{shard:05d}_stats.json").write_text(json.dumps({"count": count, "successes": count}))


def pattern(base: str, folder: Path) -> str:
    shards = sorted(p.name for p in folder.glob("*.tar"))
    return f"{base}/{{{shards[0][:-4]}..{shards[-1][:-4]}}}.tar"


def startup(folder: Path, root: Path) -> dict[str, float]:
    started = time.perf_counter()
    _, samples = scan_shards(folder)
    scan_s = time.perf_counter() - started
    started = time.perf_counter()
    table = count_table(expand_source(pattern(str(folder), folder)), root)
    table_s = time.perf_counter() - started
    assert table.total == len(samples), (table.total, len(samples))
    return {"scan_s": scan_s, "count_table_s": table_s, "ratio": scan_s / table_s, "samples": float(table.total)}


TOKENIZER = functools.cache(lambda: train_wordpiece([f"a picture of shape number {i}" for i in range(97)], 200, 16))


def map_rates(folder: Path, batch: int) -> tuple[float, float]:
    """(samples/s of an epoch, samples/s of a first epoch counting the scan that opens the dataset)."""
    opened = time.perf_counter()
    dataset = PairsDataset(folder, transform=train_transform(64, augment=True))
    dataset.tokenizer = TOKENIZER()
    started, seen = time.perf_counter(), 0
    for images, _, _ in build_train_loader(dataset, BatchPlan(batch), seed=0):
        seen += images.shape[0]
    ended = time.perf_counter()
    return seen / (ended - started), seen / (ended - opened)


def stream_set(source: str, root: Path, batch: int) -> StreamingPairs:
    table = count_table(expand_source(source), root)
    plan = StreamPlan(table.counts, 1, 1, batch)
    members = root / "shard-index" / "members"  # as `open_stream` keeps them
    dataset = StreamingPairs(
        table, train_transform(64, augment=True), plan=plan, settings=StreamSettings(), members_cache=members
    )
    dataset.tokenizer = TOKENIZER()
    return dataset


def stream_rates(source: str, root: Path, batch: int) -> tuple[float, float]:
    """(samples/s of a later epoch, samples/s of the first): a shard's members are found on its first read."""
    dataset = stream_set(source, root, batch)
    rates = []
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        started, seen = time.perf_counter(), 0
        for images, _, _ in stream_loader(dataset):
            seen += images.shape[0]
        rates.append(seen / (time.perf_counter() - started))
    return rates[1], rates[0]


def serve(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def throughput(folder: Path, root: Path, batch: int) -> dict[str, float]:
    for path in folder.iterdir():
        with fsspec.open(f"memory://bench/{path.name}", "wb") as sink:
            sink.write(path.read_bytes())
    httpd, url = serve(folder)
    try:
        steady, first = map_rates(folder, batch)
        local, local_first = stream_rates(pattern(str(folder), folder), root, batch)
        rates = {
            "map_local": steady,
            "map_local_first_epoch_with_scan": first,
            "stream_local": local,
            "stream_local_first_epoch": local_first,
            "stream_http": stream_rates(pattern(url, folder), root, batch)[0],
            "stream_fsspec_memory": stream_rates(pattern("memory://bench", folder), root, batch)[0],
        }
    finally:
        httpd.shutdown()
        httpd.server_close()
    return rates


def resident_mb() -> float:
    import os

    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_child(reader: str, folder: Path, root: Path, batch: int) -> None:
    """In a fresh process: open the training set and read 4 batches; print the peak RSS and how much the resident
    set grew over the imports' (the peak alone is mostly torch's import)."""
    TOKENIZER()
    before = resident_mb()
    if reader == "map":
        dataset = PairsDataset(folder, transform=train_transform(64, augment=True))
        dataset.tokenizer = TOKENIZER()
        loader = build_train_loader(dataset, BatchPlan(batch), seed=0)
    else:
        loader = stream_loader(stream_set(pattern(str(folder), folder), root, batch))
    for _ in zip(range(4), loader):  # as many batches at every N
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak, "growth_mb": resident_mb() - before}))


def memory(reader: str, folder: Path, root: Path, batch: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--rss-child", reader, str(folder), str(root), "--batch", str(batch)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"peak RSS of {reader} on {folder.name} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--loader-samples", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rss-child", nargs=3, metavar=("READER", "FOLDER", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        reader, folder, root = args.rss_child
        rss_child(reader, Path(folder), Path(root), args.batch)
        return
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="stream-bench-") as tmp:
        base, root = Path(tmp), Path(tmp) / "root"
        write_shards(base / "big", args.samples, args.shard_size, 16, 64)
        write_shards(base / "small", args.samples // 10, args.shard_size, 16, 64)
        write_shards(base / "loader", args.loader_samples, max(args.loader_samples // 8, 1), 64, args.loader_samples)
        info(f"wrote {args.samples} + {args.samples // 10} + {args.loader_samples} samples; load {load_before}")
        start = startup(base / "big", root)
        rates = throughput(base / "loader", root, args.batch)
        rss = {
            f"{reader}_{size}": memory(reader, base / size, root, args.batch)
            for reader in ("map", "stream")
            for size in ("small", "big")
        }
    load_after = loadavg()
    report(args, start, rates, rss, load_before, load_after)


def report(
    args: argparse.Namespace,
    start: dict[str, float],
    rates: dict[str, float],
    rss: dict[str, dict[str, float]],
    load_before: str,
    load_after: str,
) -> None:
    local = rates["stream_local"]
    ratios = {
        "start-up: scan / count table": start["ratio"],
        "streaming local / map-style local": local / rates["map_local"],
        "streaming HTTP / streaming local": rates["stream_http"] / local,
        "streaming fsspec memory / streaming local": rates["stream_fsspec_memory"] / local,
        "streaming: first epoch / map-style's with its scan": rates["stream_local_first_epoch"]
        / rates["map_local_first_epoch_with_scan"],
        "streaming RSS growth, N / (N/10)": rss["stream_big"]["growth_mb"] / rss["stream_small"]["growth_mb"],
        "map-style RSS growth, N / (N/10)": rss["map_big"]["growth_mb"] / rss["map_small"]["growth_mb"],
    }
    print_table(
        f"streaming shards: {args.samples} samples start-up, {args.loader_samples} samples per loader epoch",
        ["measure", "value"],
        [
            ("scan (s)", f"{start['scan_s']:.3f}"),
            ("count table (s)", f"{start['count_table_s']:.4f}"),
            *((f"{name} samples/s", f"{value:.0f}") for name, value in rates.items()),
            *((f"peak RSS {name} (MB)", f"{value['peak_rss_mb']:.0f}") for name, value in rss.items()),
            *((f"RSS growth {name} (MB)", f"{value['growth_mb']:.1f}") for name, value in rss.items()),
            *((name, f"{value:.2f}x") for name, value in ratios.items()),
        ],
    )
    checks = [
        check("start-up: scan / count table", start["ratio"], ">=", 50.0),
        check("streaming / map-style, local", ratios["streaming local / map-style local"], ">=", 0.9),
        check("streaming HTTP / local", ratios["streaming HTTP / streaming local"], ">=", 0.9),
        check("streaming RSS growth, N / (N/10)", ratios["streaming RSS growth, N / (N/10)"], "<=", 1.1),
    ]
    write_result(
        "stream_bench",
        {
            "samples": args.samples,
            "shard_size": args.shard_size,
            "loader_samples": args.loader_samples,
            "batch": args.batch,
            "startup": start,
            "samples_per_s": rates,
            "memory_mb": rss,
            "ratios": ratios,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        checks,
    )


if __name__ == "__main__":
    main()
