"""Per-rank memory and per-step exchange of the per-sample loss state, replicated against sharded.

Measured: K = 2 and 4 gloo processes on the CPU, N samples, global batch B, d = 256, for `sogclr`
(4 state floats per sample: s, b per side) and `isogclr_new` (8: s, b, τ, m per side). Each rank counts
the bytes of its state tensors and the bytes every collective of a loss step (forward + backward) sends
from it — ring all-gather (K−1)·n, ring all-reduce 2(K−1)/K·n, all-to-all its off-rank splits, gather
n to the root — and the bytes rank 0 receives when a checkpoint gathers a sharded state.
Computed with the same formulas: K = 8 and 64 for N = 3.3M (CC3M) and 400M (LAION-400M), local batch b:
  state per rank      replicated N·k·4          sharded ceil(N/K)·k·4
  state sent per step replicated (K−1)·b·k·4   (the state columns of the B-row result all-gather)
                      sharded    the same + (K−1)/K·b·k·4  (the fetch of the batch's rows, random batch)
  checkpoint          sharded: rank 0 receives (K−1)·ceil(N/K)·k·4 once per save
Targets: state memory per rank ≤ 1/K of replicated (+ one padding row), and sharding adds ≤ 5% to the
bytes a loss step sends at d = 256. Writes bench/results/state_sharding.json.

    python bench/state_sharding.py [--samples 10000] [--batch 256] [--steps 4] [--worlds 2 4] [--local-batch 256]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from _common import check, info, write_result

from clipctl.console import print_table
from clipctl.losses import build_loss

DIM = 256
LOSSES = {"sogclr": 4, "isogclr_new": 8}  # state floats per sample: len(state_columns) of each loss
MODES = ("replicated", "sharded")
COMPUTED_N = {"CC3M": 3_300_000, "LAION-400M": 400_000_000}
COMPUTED_K = (8, 64)
MEMORY_SLACK = 1.01  # a shard of ceil(N/K) rows may exceed N/K by one row
TARGET_EXTRA_TRAFFIC = 1.05


def sent_bytes(name: str, args: tuple, kwargs: dict[str, Any], world: int, me: int) -> int:
    """Bytes one collective sends from this rank (ring all-gather/all-reduce, direct all-to-all/gather)."""
    if name == "all_gather":
        return (world - 1) * args[1].nbytes
    if name == "all_reduce":
        return 2 * (world - 1) * args[0].nbytes // world
    if name == "all_to_all_single":
        source, splits = args[1], kwargs["input_split_sizes"]
        return (sum(splits) - splits[me]) * source[0].nbytes if source.shape[0] else 0
    if name == "gather":
        return 0 if me == kwargs.get("dst", args[2] if len(args) > 2 else 0) else args[0].nbytes
    return args[0].nbytes if me == kwargs.get("src", args[1] if len(args) > 1 else 0) else 0  # broadcast


def counting(tally: dict[str, int], calls: list, world: int, me: int) -> Callable[[], None]:
    """Wrap torch.distributed's collectives to add each call's sent bytes to `tally`; returns an undo."""
    originals = {n: getattr(dist, n) for n in ("all_gather", "all_reduce", "all_to_all_single", "gather", "broadcast")}

    def wrap(name: str, fn: Callable) -> Callable:
        def counted(*args: Any, **kwargs: Any) -> Any:
            sent = sent_bytes(name, args, kwargs, world, me)
            tally[name] += sent
            shape = tuple(args[1].shape) if name in ("all_gather", "all_to_all_single") else tuple(args[0].shape)
            calls.append([name, list(shape), sent])
            return fn(*args, **kwargs)

        return counted

    def undo() -> None:
        for name, fn in originals.items():
            setattr(dist, name, fn)

    for name, fn in originals.items():
        setattr(dist, name, wrap(name, fn))
    return undo


def measure(loss_name: str, mode: str, rank: int, world: int, args: argparse.Namespace) -> dict[str, Any]:
    """One rank's state bytes, sent bytes per loss step (by collective) and checkpoint-gather bytes."""
    loss_fn = build_loss({"name": loss_name, "state_sharding": mode}, num_samples=args.samples)
    gen = torch.Generator().manual_seed(0)
    b = args.batch // world
    warm = torch.randperm(args.samples, generator=gen)[: args.batch]
    x = F.normalize(torch.randn(args.batch, DIM, generator=gen), dim=1)
    loss_fn(x[rank * b : (rank + 1) * b], x[rank * b : (rank + 1) * b], warm[rank * b : (rank + 1) * b], epoch=0)
    tally: dict[str, int] = defaultdict(int)
    calls: list = []
    undo = counting(tally, calls, world, rank)
    try:
        for _ in range(args.steps):
            index = torch.randperm(args.samples, generator=gen)[: args.batch][rank * b : (rank + 1) * b]
            xi = F.normalize(torch.randn(b, DIM, generator=gen), dim=1).requires_grad_(True)
            ti = F.normalize(torch.randn(b, DIM, generator=gen), dim=1).requires_grad_(True)
            loss_fn(xi, ti, index, epoch=1).loss.backward()
        per_step = {name: sent / args.steps for name, sent in tally.items()}
        step_calls = calls[: len(calls) // args.steps]
        tally.clear()
        loss_fn.state_dict()
    finally:
        undo()
    state = loss_fn.state
    return {
        "rows": state.rows,
        "state_bytes": state.values.nbytes + sum(t.nbytes for t in state.scalars.values()),
        "sent_per_step": per_step,
        "sent_per_step_total": sum(per_step.values()),
        "calls_per_step": step_calls,
        "checkpoint_gather_sent": tally["gather"],
    }


def _worker(rank: int, world: int, init_file: str, out_dir: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {loss: {mode: measure(loss, mode, rank, world, args) for mode in MODES} for loss in LOSSES}
        Path(out_dir, f"{world}.{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def measured(world: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every rank's figures for K = `world`, and the per-rank maximum / mean that the tables use."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, str(Path(tmp, "init")), tmp, args), nprocs=world, join=True)
        ranks = [json.loads(Path(tmp, f"{world}.{r}.json").read_text()) for r in range(world)]
    out: dict[str, Any] = {}
    for loss, k in LOSSES.items():
        out[loss] = {}
        for mode in MODES:
            per_rank = [r[loss][mode] for r in ranks]
            out[loss][mode] = {
                "rows_per_rank": [p["rows"] for p in per_rank],
                "state_bytes_per_rank_max": max(p["state_bytes"] for p in per_rank),
                "sent_per_step_mean": sum(p["sent_per_step_total"] for p in per_rank) / world,
                "fetch_sent_per_step_mean": sum(p["sent_per_step"].get("all_to_all_single", 0) for p in per_rank)
                / world,
                "checkpoint_gather_received_by_rank0": sum(p["checkpoint_gather_sent"] for p in per_rank),
                "calls_per_step_rank0": per_rank[0]["calls_per_step"],
            }
        b = args.batch // world
        out[loss]["fetch_expected_per_step"] = (world - 1) / world * b * k * 4
        out[loss]["sent_ratio"] = (
            out[loss]["sharded"]["sent_per_step_mean"] / out[loss]["replicated"]["sent_per_step_mean"]
        )
        out[loss]["memory_ratio"] = (
            out[loss]["sharded"]["state_bytes_per_rank_max"] / out[loss]["replicated"]["state_bytes_per_rank_max"]
        )
    return out


def computed(local_batch: int) -> list[dict[str, Any]]:
    """The formulas of the module docstring at the scales of the real datasets."""
    rows = []
    for data, n in COMPUTED_N.items():
        for world in COMPUTED_K:
            for loss, k in LOSSES.items():
                in_table = (world - 1) * local_batch * k * 4
                rows.append(
                    {
                        "data": data,
                        "N": n,
                        "K": world,
                        "loss": loss,
                        "floats_per_sample": k,
                        "local_batch": local_batch,
                        "state_bytes_replicated": n * k * 4,
                        "state_bytes_sharded": math.ceil(n / world) * k * 4,
                        "state_sent_per_step_replicated": in_table,
                        "state_sent_per_step_sharded": in_table + (world - 1) / world * local_batch * k * 4,
                        "checkpoint_gather_received_by_rank0": (world - 1) * math.ceil(n / world) * k * 4,
                    }
                )
    return rows


def human(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def report(measures: dict[int, Any], table: list[dict[str, Any]], args: argparse.Namespace) -> None:
    rows = []
    for world, losses in measures.items():
        for loss, m in losses.items():
            rep, sh = m["replicated"], m["sharded"]
            rows.append(
                [
                    f"K={world}",
                    loss,
                    human(rep["state_bytes_per_rank_max"]),
                    human(sh["state_bytes_per_rank_max"]),
                    f"{m['memory_ratio']:.3f}x",
                    human(rep["sent_per_step_mean"]),
                    human(sh["sent_per_step_mean"]),
                    f"{m['sent_ratio']:.4f}x",
                    human(sh["fetch_sent_per_step_mean"]),
                ]
            )
    print_table(
        f"measured, gloo CPU, N={args.samples}, B={args.batch}, d={DIM} (per rank)",
        ["K", "loss", "state repl.", "state shard.", "ratio", "step sent repl.", "step sent shard.", "ratio", "fetch"],
        rows,
    )
    print_table(
        f"computed, local batch b={args.local_batch} (per rank)",
        ["data", "K", "loss", "state repl.", "state shard.", "state sent/step repl.", "shard.", "ckpt gather"],
        [
            [
                r["data"],
                r["K"],
                r["loss"],
                human(r["state_bytes_replicated"]),
                human(r["state_bytes_sharded"]),
                human(r["state_sent_per_step_replicated"]),
                human(r["state_sent_per_step_sharded"]),
                human(r["checkpoint_gather_received_by_rank0"]),
            ]
            for r in table
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000, help="N of the measured runs")
    parser.add_argument("--batch", type=int, default=256, help="global batch B of the measured runs")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--local-batch", type=int, default=256, help="b per rank of the computed rows")
    args = parser.parse_args(argv)
    measures = {world: measured(world, args) for world in args.worlds}
    table = computed(args.local_batch)
    report(measures, table, args)
    top = max(args.worlds)
    worst_memory = max(m["memory_ratio"] for m in measures[top].values())
    worst_sent = max(m["sent_ratio"] for m in measures[top].values())
    checks = [
        check(f"sharded / replicated state per rank, K={top}", worst_memory, "<=", MEMORY_SLACK / top),
        check(
            f"sharded / replicated bytes sent per loss step, K={top}, d={DIM}", worst_sent, "<=", TARGET_EXTRA_TRAFFIC
        ),
    ]
    info(f"K = {top}: state per rank {worst_memory:.3f}x of replicated, bytes sent per step {worst_sent:.4f}x")
    payload = {
        "samples": args.samples,
        "batch": args.batch,
        "dim": DIM,
        "steps": args.steps,
        "backend": "gloo",
        "device": "cpu",
        "floats_per_sample": LOSSES,
        "measured": {str(k): v for k, v in measures.items()},
        "computed": table,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "load": Path("/proc/loadavg").read_text().split()[:3],
    }
    write_result("state_sharding", payload, checks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
