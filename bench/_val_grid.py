"""Choose one recipe value on the VALIDATION split: train RECIPE once per value (one seed), record each run's
best validation objective and its last logged loss diagnostics, and name the best value.

    python bench/_val_grid.py recipes/study/isogclr_new_v2_b32.toml loss.eta_init 1e-3 3e-4 1e-4 \
        --out runs/study-grid --results bench/results/study/grid_isogclr_new_v2_b32.json

The test split is never read here (every run's summary holds its test metrics too, but only `best`, the
validation metrics of the selected epoch, is compared). Finished runs are kept, so a rerun only completes what
is missing. `--jobs K` trains K values at a time with the torch threads split between them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import ROOT, info

from clipctl.atomic import atomic_write_json

DIAGNOSTICS = ("tau_I_mean", "tau_I_std", "tau_I_at_min", "tau_I_at_max", "tau_grad_I_pos", "stale_I", "loss")


def run_name(recipe: Path, key: str, value: str, seed: int) -> str:
    return f"{recipe.stem}-{key.split('.')[-1]}-{value}-seed{seed}"


def train(recipe: Path, key: str, value: str, seed: int, out: Path, threads: int) -> Path:
    name = run_name(recipe, key, value, seed)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "clipctl", "train", str(recipe), f"{key}={value}", f"run.seed={seed}",
               "--name", name, "--out", str(out), "--resume", "auto"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with open(logs / f"{name}.log", "ab") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if code != 0:
        raise SystemExit(f"{name}: clipctl train exited {code}; see {logs / (name + '.log')}")
    info(f"grid: {name} done")
    return out / name


def last_train_record(run_dir: Path) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("type") == "train":
            record = entry
    return {k: record.get(k) for k in DIAGNOSTICS if k in record}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("key")
    parser.add_argument("values", nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda v: train(args.recipe, args.key, v, args.seed, args.out, threads), args.values))
    rows = []
    for value, run_dir in zip(args.values, runs):
        summary = json.loads((run_dir / "summary.json").read_text())
        rows.append({"value": value, "run": run_dir.name, "best_epoch": summary["best_epoch"],
                     "val_objective": summary["best"]["val/objective"], "last_train": last_train_record(run_dir)})
    best = max(rows, key=lambda row: row["val_objective"])
    payload = {"recipe": str(args.recipe), "key": args.key, "seed": args.seed, "selected_on": "validation split",
               "rows": rows, "chosen": best["value"], "load": Path("/proc/loadavg").read_text().split()[:3]}
    atomic_write_json(args.results, payload, indent=2)
    for row in rows:
        info(f"{args.key}={row['value']}: val objective {100 * row['val_objective']:.2f} {row['last_train']}")
    info(f"chosen on validation: {args.key}={best['value']} -> {args.results}")


if __name__ == "__main__":
    main()
