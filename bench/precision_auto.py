"""The quickstart end to end at `train.precision = auto` against float32: what `auto` gains on this machine.

Trains the quickstart recipe as shipped, whole, at `train.precision = "no"` (float32) and at `auto` from each seed,
seed by seed (so drift in the machine's load hits both), and records each run's training samples/s (its summary:
samples over the time spent in training steps, data waits included), the precision `auto` resolved to, and the
validation and test objectives. Targets (issue 32): auto / float32 >= 1.3x, and test objectives equal, i.e. the
means at most one standard deviation across seeds apart (the larger std of the two). The step-time comparison of
precisions (fp32, bf16, channels-last) is bench/precision.py's. Writes bench/results/precision_auto.json.

    python bench/precision_auto.py [--seeds 0 1 2] [--set KEY=VALUE ...]

`--set` adds recipe overrides to every run (e.g. `train.max_steps=20` for a quick look; the recorded figure is the
whole recipe).
"""

from __future__ import annotations

import argparse
import sys

import torch
from _common import check, print_checks, write_result
from precision import TARGET_SPEEDUP, cpu_flags, loadavg, quickstart_runs

from clipctl.doctor import package_versions

AUTO_VS_FP32 = {"fp32": "no", "auto": "auto"}  # name -> train.precision


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per seed and precision")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides of every run")
    args = parser.parse_args(argv)
    before = loadavg()
    whole = quickstart_runs(AUTO_VS_FP32, args.seeds, tuple(args.set))
    results = {
        "argv": sys.argv[1:] if argv is None else argv,
        "threads": torch.get_num_threads(),
        "versions": package_versions(),
        "cpu": cpu_flags(),
        "loadavg_before": before,
        "loadavg_after": loadavg(),
        **whole,
    }
    checks = [
        check("quickstart training samples/s, auto / fp32", whole["samples_per_s_ratio"], ">=", TARGET_SPEEDUP),
        check("quickstart test objective, |auto - fp32| / std", whole["test_difference_in_std"], "<=", 1.0, "std"),
    ]
    write_result("precision_auto", results, checks)
    print(
        f"quickstart, seeds {args.seeds}: samples/s "
        + " ".join(f"{n}={m:.1f}" for n, m in whole["samples_per_s_mean"].items())
        + f" ({whole['samples_per_s_ratio']:.2f}x), auto trained in {sorted(set(whole['runs']['auto']['precision']))}"
        + "; test objective "
        + " ".join(f"{n}={m:.4f}" for n, m in whole["test_objective_mean"].items())
    )
    print_checks(checks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
