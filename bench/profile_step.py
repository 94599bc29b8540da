"""Where the quickstart's training step goes on the CPU: torch.profiler over the trainer's update, per loss and dtype.

The quickstart recipe's towers at its batch size (128, 64 px) on seeded synthetic batches, the optimizer the trainer
builds, the update the trainer makes (`train_throughput.step`: towers under autocast, loss in float32 without
logging statistics, backward, the loss's gradient hook, optimizer step, zero_grad, the loss's projection). For each
loss (`isogclr_new`, `clip`) and precision (`fp32`, and `auto`: what `train.precision = auto` picks for these towers
on this CPU), one warm-up step, then `--steps` steps under the CPU profiler. Recorded per step: the top entries by
self CPU time, and the self CPU time grouped by what it serves: the image tower and the text tower (their forward
ops and the backward ops autograd runs for them, linked by sequence number), the loss (forward and backward alike),
the optimizer (its hooks included), and everything else (autograd's own bookkeeping, the features' casts). Timings
come from a machine whose load is recorded (/proc/loadavg before and after); the shares are what to read.

The same steps are then timed without the profiler (median wall seconds per step), since the profiler's self times
leave out the Python between ops and inflate many small ops.

`--label NAME` stores the profiles under that key, keeping the other labels in the file. The change this benchmark
led to (torch's fused Adam/AdamW kernel on the CPU, clipctl/train/optim.py) has its "before" in
`--optimizer per-tensor --label before` and its "after" in `--label after`. Writes bench/results/profile_step.json.

    python bench/profile_step.py [--losses isogclr_new clip] [--precisions fp32 auto] [--batch 128] [--steps 3]
                                 [--top 15] [--label current] [--optimizer trainer|per-tensor] [--finding TEXT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from typing import Any

import torch
from _common import RESULTS, check, print_checks, write_result
from precision import cpu_flags, loadavg
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile, record_function
from train_throughput import MODELS, build, make_batches, step

from clipctl.doctor import package_versions
from clipctl.model.cpu_precision import cpu_auto_precision
from clipctl.train.optim import build_optimizer

TOWERS = {"image tower": ("image_tower", "image_proj"), "text tower": ("text_tower", "text_proj")}
PHASES = ("loss", "optimizer")  # record_function ranges of train_throughput.step
GROUPS = (*TOWERS, *PHASES, "other")
BACKWARD_NODE = "autograd::engine::evaluate_function: "
# The share of the step that is neither tower: the loss, the optimizer and the rest. What clipctl itself adds around
# the towers' kernels lives here; a ceiling, so that growth in it shows as a missed target.
TARGET_NON_TOWER_SHARE = 0.5
QUICKSTART_IMAGE_TOWER = "test_resnet"  # recipes/quickstart.toml's model.image_model


def autocast_of(precision: str) -> str:
    """fp32, or the autocast that `train.precision = auto` picks for the quickstart's image tower on this CPU."""
    if precision == "fp32":
        return "fp32"
    return "bf16" if cpu_auto_precision(QUICKSTART_IMAGE_TOWER).value == "bf16" else "fp32"


@contextlib.contextmanager
def labelled_towers(model: torch.nn.Module):
    """Each tower's forward (projection included) inside a record_function range named after it."""
    handles = []
    for label, names in TOWERS.items():
        for name in names:
            module = getattr(model, name)
            ranges: list[Any] = []
            handles.append(module.register_forward_pre_hook(lambda _m, _a, r=ranges, n=label: _enter(r, n)))
            handles.append(
                module.register_forward_hook(lambda _m, _a, _o, r=ranges: r.pop().__exit__(None, None, None))
            )
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _enter(ranges: list[Any], label: str) -> None:
    scope = record_function(label)
    scope.__enter__()
    ranges.append(scope)


def group_of(event: FunctionEvent, forward_groups: dict[int, str]) -> str:
    """The group an event's self time serves: its innermost labelled range, or for an op autograd runs in backward,
    the group of the forward op with the same sequence number."""
    node: FunctionEvent | None = event
    while node is not None:
        if node.name in GROUPS:
            return node.name
        if node.name.startswith(BACKWARD_NODE) and node.sequence_nr in forward_groups:
            return forward_groups[node.sequence_nr]
        node = node.cpu_parent
    return "other"


def forward_labels(events: list[FunctionEvent]) -> dict[int, str]:
    """Sequence number -> group of every forward op inside a labelled range (what its backward node serves)."""
    labels: dict[int, str] = {}
    for event in events:
        if event.sequence_nr < 0 or event.name.startswith(BACKWARD_NODE):
            continue
        parent = event.cpu_parent
        while parent is not None and parent.name not in GROUPS:
            parent = parent.cpu_parent
        if parent is not None and parent.name in (*TOWERS, "loss"):
            labels.setdefault(event.sequence_nr, parent.name)
    return labels


def summarize(prof: profile, steps: int, top: int) -> dict[str, Any]:
    """Per step: total self CPU time, its shares by group, and the top entries by self CPU time."""
    events = [e for e in prof.events() if e.device_type.name == "CPU"]
    forward_groups = forward_labels(events)
    grouped: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for event in events:
        group = group_of(event, forward_groups)
        grouped[group] += event.self_cpu_time_total
        calls[group] += event.name.startswith("aten::")
    total = sum(grouped.values())
    averages = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)
    return {
        "self_cpu_ms_per_step": total / steps / 1e3,
        "group_share": {name: grouped[name] / total for name in GROUPS},
        "group_ms_per_step": {name: grouped[name] / steps / 1e3 for name in GROUPS},
        "top_self_cpu": [
            {
                "name": a.key,
                "self_cpu_ms_per_step": a.self_cpu_time_total / steps / 1e3,
                "share": a.self_cpu_time_total / total,
                "calls_per_step": a.count / steps,
            }
            for a in averages[:top]
        ],
        "aten_calls_per_step": {name: calls[name] / steps for name in GROUPS},
    }


def profile_one(loss_name: str, precision: str, batch: int, steps: int, top: int, per_tensor: bool) -> dict[str, Any]:
    """The profile of `steps` updates after one warm-up update, the trainer's optimizer included (`per_tensor`: on
    the per-tensor path it took before it used torch's fused CPU kernel, the "before" of that change)."""
    recipe, model, loss, _, _ = build("quickstart", loss_name, (steps + 1) * batch)
    optimizer = build_optimizer(model, loss.param_groups(recipe.optim.lr), recipe.optim)
    if per_tensor:
        for group in optimizer.param_groups:
            group["fused"] = None
    batches = make_batches(recipe, batch, steps + 1)
    autocast = autocast_of(precision)
    step(model, loss, optimizer, batches[0], epoch=1, precision=autocast, stats=False)
    with labelled_towers(model), profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[1:]:
            step(model, loss, optimizer, b, epoch=1, precision=autocast, stats=False)
    wall = []
    for b in batches[1:]:
        start = time.perf_counter()
        step(model, loss, optimizer, b, epoch=1, precision=autocast, stats=False)
        wall.append(time.perf_counter() - start)
    return {
        "loss": loss_name,
        "precision": precision,
        "autocast": autocast,
        "batch": batch,
        "steps": steps,
        "optimizer": type(optimizer).__name__,
        "optimizer_path": {k: optimizer.param_groups[0].get(k) for k in ("foreach", "fused")},
        "step_seconds_unprofiled": statistics.median(wall),
        **summarize(prof, steps, top),
    }


def previous_profiles() -> dict[str, Any]:
    """The labels already in the result file (a `before` kept while an `after` is written)."""
    path = RESULTS / "profile_step.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text()).get("profiles", {})


def share_checks(profiles: dict[str, dict[str, Any]], label: str) -> list[dict[str, Any]]:
    checks = []
    for key, result in profiles.items():
        share = 1.0 - sum(result["group_share"][tower] for tower in TOWERS)
        checks.append(
            check(f"non-tower share of the step, {key} ({label})", share, "<=", TARGET_NON_TOWER_SHARE, "fraction")
        )
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", nargs="+", default=["isogclr_new", "clip"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"], choices=["fp32", "auto"])
    parser.add_argument("--batch", type=int, default=MODELS["quickstart"][2], help="batch size (the recipe's)")
    parser.add_argument("--steps", type=int, default=3, help="profiled updates per loss and precision")
    parser.add_argument("--top", type=int, default=15, help="entries by self CPU time kept per profile")
    parser.add_argument("--label", default="current", help="key of this run's profiles (e.g. before, after)")
    parser.add_argument("--finding", help="what the profiles show, stored with the label")
    parser.add_argument(
        "--optimizer",
        choices=["trainer", "per-tensor"],
        default="trainer",
        help="the trainer's optimizer, or it on the per-tensor path (what the trainer used before the fused kernel)",
    )
    args = parser.parse_args(argv)
    profiles: dict[str, Any] = {}
    load_before = loadavg()
    for loss_name in args.losses:
        for precision in args.precisions:
            result = profile_one(
                loss_name, precision, args.batch, args.steps, args.top, per_tensor=args.optimizer == "per-tensor"
            )
            profiles[f"{loss_name} {precision}"] = result
            shares = " ".join(f"{n}={100 * s:.0f}%" for n, s in result["group_share"].items())
            step_ms = result["self_cpu_ms_per_step"]
            print(f"{loss_name} {precision} ({result['autocast']}): {step_ms:.0f} ms/step  {shares}")
    entry = {
        "argv": sys.argv[1:] if argv is None else argv,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "threads": torch.get_num_threads(),
        "optimizer": args.optimizer,
        "finding": args.finding,
        "profiles": profiles,
    }
    everything = {**previous_profiles(), args.label: entry}
    payload = {
        "machine": platform.machine(),
        "torch": torch.__version__,
        "versions": package_versions(),
        "cpu": cpu_flags(),
        "profiles": everything,
    }
    checks = share_checks(profiles, args.label)
    write_result("profile_step", payload, checks)
    print_checks(checks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
