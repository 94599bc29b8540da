"""Training-step time by precision on the CPU: fp32, bf16 autocast, bf16 autocast + channels-last (+ torch.compile).

`train.precision = auto` on a CPU reads its decision from this benchmark's result (clipctl/train/devices.py holds
the figures): bf16 for a tower set only where it is faster here. Every variant is its own model built from the same
seed, measured side by side in one process on the same synthetic batches, in interleaved rounds (each round starts
with the next variant, so drift in the machine's load hits all alike); the median round counts. The load
(/proc/loadavg, before and after) and the CPU's bf16-relevant flags are recorded with the figures.
Writes bench/results/precision.json.

    python bench/precision.py [--models quickstart paper] [--loss isogclr_new] [--steps 2] [--rounds 3]
                              [--batch N] [--image-size PX] [--compile] [--metrics STEPS] [--seeds 0 1 2]

`--metrics STEPS` also trains the quickstart recipe for STEPS updates (`train.max_steps`) at float32 and at bf16
from each seed and records the validation and test objectives side by side: "equal" means the two means lie within
one standard deviation across seeds (the larger of the two). The paper towers are too slow to train on a CPU.

torch.compile is opt-in (`--compile`): inductor compiles the towers' forward and backward with the host's C++
compiler, minutes per tower set on a small machine, so the default run records that it was not run and why.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import check, print_checks, write_result
from train_throughput import MODELS, build, make_batches, step

from clipctl.doctor import package_versions
from clipctl.model.cpu_precision import cpu_bf16_matmul
from clipctl.recipe import load_recipe
from clipctl.train.trainer import TrainOptions, train

# variant -> (autocast precision, extra recipe overrides, compiled)
VARIANTS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "fp32": ("fp32", (), False),
    "bf16": ("bf16", (), False),
    "bf16_channels_last": ("bf16", ("model.channels_last=true",), False),
}
COMPILED = {"bf16_compile": ("bf16", (), True)}
DTYPE_OF = {"fp32": "no", "bf16": "bf16"}  # the short runs' train.precision
# The target: the quickstart's training step at its best precision 1.3x faster than at fp32.
TARGET_SPEEDUP = 1.3
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
NOT_COMPILED = (
    "not run (pass --compile): inductor compiles each tower set's forward and backward with the host's C++ "
    "compiler; a trial on the quickstart towers (2026-12-05, 2 shared cores) spent 89 s compiling in the first "
    "step and then stepped 1.04 s against 1.15 s for bf16 eager and 0.52 s for bf16 + channels-last, one round "
    "on a loaded machine; the paper towers take longer to compile"
)


def cpu_flags() -> dict[str, Any]:
    """The bf16-relevant flags of /proc/cpuinfo (Linux), torch's vector capability and clipctl's probe."""
    cpuinfo = Path("/proc/cpuinfo")
    flags: set[str] = set()
    if cpuinfo.exists():
        line = next((ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("flags")), "")
        flags = set(line.partition(":")[2].split())
    return {
        "flags": {name: name in flags for name in CPU_FLAGS},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_matmul": cpu_bf16_matmul(),
    }


def loadavg() -> str | None:
    path = Path("/proc/loadavg")
    return path.read_text().strip() if path.exists() else None


def setup_variants(kind: str, loss: str, names: list[str], batch: int, steps: int, image_size: int | None):
    """Each variant's model, loss and optimizer, built from the same seed; compiled ones are compiled here."""
    setups = {}
    for name in names:
        precision, extra, compiled = {**VARIANTS, **COMPILED}[name]
        recipe, model, loss_fn, optimizer, _ = build(kind, loss, steps * batch, image_size=image_size, extra=extra)
        if compiled:
            model = torch.compile(model)
        setups[name] = (precision, model, loss_fn, optimizer)
    return recipe, setups


def measure(
    kind: str, loss: str, names: list[str], steps: int, rounds: int, batch: int | None, image_size: int | None
) -> dict[str, Any]:
    batch = batch or MODELS[kind][2]
    recipe, setups = setup_variants(kind, loss, names, batch, steps, image_size)
    batches = make_batches(recipe, batch, steps)
    first_step: dict[str, float] = {}
    for name, (precision, model, loss_fn, optimizer) in setups.items():  # warm-up (and compilation), epoch 1
        start = time.perf_counter()
        step(model, loss_fn, optimizer, batches[0], epoch=1, precision=precision)
        first_step[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            precision, model, loss_fn, optimizer = setups[name]
            start = time.perf_counter()
            for b in batches:
                step(model, loss_fn, optimizer, b, epoch=1, precision=precision)
            times[name].append((time.perf_counter() - start) / len(batches))
    step_time = {name: statistics.median(t) for name, t in times.items()}
    return {
        "batch": batch,
        "image_size": recipe.data.image_size,
        "image_model": recipe.model.image_model,
        "loss": loss,
        "step_seconds": step_time,
        "step_seconds_rounds": times,
        "first_step_seconds": first_step,
        "samples_per_s": {name: batch / t for name, t in step_time.items()},
        "ratio_vs_fp32": {name: t / step_time["fp32"] for name, t in step_time.items()},
        "speedup_vs_fp32": {name: step_time["fp32"] / t for name, t in step_time.items()},
    }


def quickstart_runs(precisions: dict[str, str], seeds: list[int], extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The quickstart trained from each seed at each `train.precision` (name -> value), seed by seed; samples/s and
    objectives side by side. "Equal" objectives: the means differ by at most one standard deviation across seeds
    (the larger of the two)."""
    runs = {name: {"val": [], "test": [], "samples_per_s": [], "precision": []} for name in precisions}
    with tempfile.TemporaryDirectory() as out:
        for seed in seeds:
            for name, precision in precisions.items():
                overrides = [*extra, f"train.precision={precision}", f"run.seed={seed}"]
                options = TrainOptions(out_dir=Path(out), name=f"{name}{seed}")
                summary = train(load_recipe("quickstart", overrides), options)
                runs[name]["val"].append(summary["best"]["val/objective"])
                runs[name]["test"].append(summary["test"]["objective"])
                runs[name]["samples_per_s"].append(summary["samples_per_s"])
                meta = json.loads((Path(out) / f"{name}{seed}" / "meta.json").read_text())
                runs[name]["precision"].append(meta["precision"])
    result: dict[str, Any] = {"recipe": "quickstart", "overrides": list(extra), "seeds": seeds, "runs": runs}
    first, second = precisions
    for split in ("val", "test", "samples_per_s"):
        mean = {name: statistics.mean(r[split]) for name, r in runs.items()}
        spread = max(statistics.stdev(r[split]) if len(seeds) > 1 else 0.0 for r in runs.values())
        key = split if split == "samples_per_s" else f"{split}_objective"
        result[f"{key}_mean"] = mean
        result[f"{key}_std_max"] = spread
        if split != "samples_per_s":
            result[f"{split}_difference_in_std"] = abs(mean[first] - mean[second]) / spread if spread else None
            result[f"{split}_equal"] = abs(mean[first] - mean[second]) <= spread
    result["samples_per_s_ratio"] = result["samples_per_s_mean"][second] / result["samples_per_s_mean"][first]
    return result


def short_run_metrics(steps: int, seeds: list[int]) -> dict[str, Any]:
    """The quickstart trained `steps` updates at float32 and at bf16 from each seed, objectives side by side."""
    result = quickstart_runs(DTYPE_OF, seeds, (f"train.max_steps={steps}",))
    return {"max_steps": steps, **result}


def speedup_checks(models: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per tower set: the best variant's step-time speedup over fp32, against the issue's 1.3x."""
    checks = []
    for kind, result in models.items():
        others = {n: s for n, s in result["speedup_vs_fp32"].items() if n != "fp32"}
        best = max(others, key=others.__getitem__)
        checks.append(check(f"fp32 / {best} step time, {kind} towers", others[best], ">=", TARGET_SPEEDUP))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--loss", default="isogclr_new", help="the loss of every variant (the recipes' default)")
    parser.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median round counts")
    parser.add_argument("--batch", type=int, help="batch size for every model (default: quickstart 128, paper 8)")
    parser.add_argument("--image-size", type=int, help="image side for every model (default: quickstart 64, paper 224)")
    parser.add_argument("--compile", action="store_true", help="add bf16 + torch.compile (slow to compile)")
    parser.add_argument("--metrics", type=int, default=0, help="also train the quickstart this many updates per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the --metrics runs")
    args = parser.parse_args(argv)
    names = [*VARIANTS, *(COMPILED if args.compile else ())]
    results: dict[str, Any] = {
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "versions": package_versions(),
        "cpu": cpu_flags(),
        "loadavg_before": loadavg(),
        "variants": names,
        "compile": "run" if args.compile else NOT_COMPILED,
        "models": {},
    }
    for kind in args.models:
        result = measure(kind, args.loss, names, args.steps, args.rounds, args.batch, args.image_size)
        results["models"][kind] = result
        print(
            f"{kind}: batch {result['batch']} @ {result['image_size']}px  samples/s "
            + " ".join(f"{n}={s:.1f}" for n, s in result["samples_per_s"].items())
            + "  speedup vs fp32: "
            + " ".join(f"{n}={r:.2f}x" for n, r in result["speedup_vs_fp32"].items())
        )
    if args.metrics:
        results["metrics"] = short_run_metrics(args.metrics, args.seeds)
        metrics = results["metrics"]
        print(
            f"quickstart {args.metrics} updates, seeds {args.seeds}: test objective "
            + " ".join(f"{n}={m:.4f}" for n, m in metrics["test_objective_mean"].items())
            + f" equal={metrics['test_equal']}"
        )
    results["loadavg_after"] = loadavg()
    checks = speedup_checks(results["models"])
    write_result("precision", results, checks)
    print_checks(checks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
