"""Tuner overhead: one GP ask + tell with 100 observed points, replay of 100 trials, study storage I/O.

A study of phase-1 shape (2 categorical + 2 log-uniform dimensions, gp_hedge, 12 LHS initial points) is
driven to 100 observations through `SkoptSearch` (every tell refits the GP, as in a real study; the time
this takes is exactly what resuming a 100-trial study costs, since resume replays the same calls). Then
`--repeats` further ask+tell pairs are timed at 100..100+repeats observations, and writing/reading records
of the default storage (Optuna's journal file: one append + fsync per record) is timed in a temporary study.
Target: one ask + tell at 100 points costs at most 1% of a 10-minute trial. Prints the numbers and writes
bench/results/tune_overhead.json.

    python bench/tune_overhead.py [--observed 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from _common import check, write_result

from clipctl.console import info, print_table
from clipctl.tune.space import SearchSpace
from clipctl.tune.storage import PhaseStore, open_storage
from clipctl.tune.strategies import SkoptSearch

SPACE = {
    "loss.name": ["sogclr", "isogclr_new", "isogclr_new_v2"],
    "optim.name": [
        "adam",
        "adamw",
        "radam",
        "novograd",
        "fusedadam",
        "fusedlamb",
        "fusednovograd",
        "rmsprop",
        "momentum",
        "nvnovograd",
    ],
    "optim.lr": {"low": 1e-4, "high": 1e-2, "prior": "log-uniform"},
    "optim.weight_decay": {"low": 1e-6, "high": 1e-1, "prior": "log-uniform"},
}
STORAGE_RECORDS = 200
# A phase-1 trial (10 epochs on 20% of CC3M-100k) takes minutes; the tuner must stay out of its way.
REFERENCE_TRIAL_S = 600
TARGET_SHARE = 0.01


def objective(point: dict) -> float:
    """A smooth synthetic objective with a per-optimizer offset (the values only shape the GP)."""
    offset = SPACE["optim.name"].index(point["optim.name"]) / 100
    return 0.5 - 0.1 * (math.log10(point["optim.lr"]) + 3) ** 2 - offset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observed", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    search = SkoptSearch(SearchSpace.from_toml(SPACE, "bench"), n_initial=12, acq="gp_hedge", seed=0)
    start = time.perf_counter()
    for _ in range(args.observed):
        point = search.ask(1, [])[0]
        search.tell(point, objective(point))
    replay_s = time.perf_counter() - start

    asks, tells = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        point = search.ask(1, [])[0]
        t1 = time.perf_counter()
        search.tell(point, objective(point))
        asks.append(t1 - t0)
        tells.append(time.perf_counter() - t1)
    t0 = time.perf_counter()
    search.ask(4, [point])  # a --parallel 4 refill while one trial runs (constant liar on a copy)
    batch_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        store = PhaseStore(open_storage("", Path(tmp)), 1, SearchSpace.from_toml(SPACE, "bench"))
        store.add_attempt(1, 1, point, {"worker": "bench"}, {})
        attempt = store.attempts()[0]
        t0 = time.perf_counter()
        for epoch in range(STORAGE_RECORDS):  # an epoch report: one journal record
            store.report(attempt, epoch, 0.5)
        append_s = (time.perf_counter() - t0) / STORAGE_RECORDS
        t0 = time.perf_counter()
        PhaseStore(open_storage("", Path(tmp)), 1).attempts()  # a fresh process replays the whole journal
        read_s = (time.perf_counter() - t0) / STORAGE_RECORDS

    result = {
        "observed_points": args.observed,
        "space": "2 categorical (3, 10) + 2 log-uniform; gp_hedge; 12 LHS initial points",
        "ask_s_median": statistics.median(asks),
        "tell_s_median": statistics.median(tells),
        "ask_tell_s_median": statistics.median(a + t for a, t in zip(asks, tells)),
        "ask_4_with_1_pending_s": batch_s,
        "replay_s": replay_s,
        "replay_s_per_trial": replay_s / args.observed,
        "storage_append_fsync_s_per_record": append_s,
        "storage_read_s_per_record": read_s,
        "repeats": args.repeats,
        "versions": {
            "python": platform.python_version(),
            "scikit-optimize": version("scikit-optimize"),
            "scikit-learn": version("scikit-learn"),
            "numpy": version("numpy"),
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_1m": os.getloadavg()[0]},
    }
    print_table(
        f"tune overhead at {args.observed} observed points",
        ["measure", "seconds"],
        [
            ("ask (median)", f"{result['ask_s_median']:.4f}"),
            ("tell = GP refit + acquisition (median)", f"{result['tell_s_median']:.3f}"),
            ("ask + tell (median)", f"{result['ask_tell_s_median']:.3f}"),
            ("ask 4 points, 1 pending (--parallel)", f"{batch_s:.3f}"),
            (f"replay of {args.observed} trials (resume)", f"{replay_s:.1f}"),
            ("journal storage append + fsync, per record", f"{append_s:.5f}"),
            ("journal storage read, per record", f"{read_s:.6f}"),
        ],
    )
    share = result["ask_tell_s_median"] / REFERENCE_TRIAL_S
    info(
        f"ask+tell is {100 * share:.3f}% of a 10-minute trial; resuming a {args.observed}-trial study replays in "
        f"{replay_s:.0f} s"
    )
    checks = [check(f"ask+tell at {args.observed} points / 10-min trial", share, "<=", TARGET_SHARE, unit="fraction")]
    write_result("tune_overhead", result, checks)


if __name__ == "__main__":
    main()
