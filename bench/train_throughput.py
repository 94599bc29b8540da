"""Training-step throughput: clip vs sogclr vs isogclr_new on the quickstart and paper models, plus MFU.

Everything is measured side by side in one process on synthetic batches (the data loader has its own
bench), so the ratios compare like with like. MFU = model FLOPs per sample (torch's FlopCounterMode
over forward + backward) × samples/s ÷ this device's matmul rate in the same precision, measured in the
same run. Targets: the GCL step at most 1.03x the CLIP step on the paper towers, and MFU at least 30%.
Writes bench/results/train_throughput.json (`--name` changes the file; bench/gpu_check.sh uses it on a GPU
with `--device cuda --precision bf16 --batch 128`, where peak memory per loss is recorded too).

    python bench/train_throughput.py [--models quickstart paper] [--losses clip sogclr isogclr_new]
                                     [--device cpu|cuda] [--precision fp32|bf16] [--batch N] [--image-size PX]
                                     [--steps 2] [--rounds 7]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from typing import Any

import torch
from _common import check, print_checks, write_result
from torch.profiler import record_function
from torch.utils.flop_counter import FlopCounterMode

from clipctl.data.text import TextTokenizer
from clipctl.doctor import package_versions
from clipctl.losses import build_loss
from clipctl.model.clip import build_model
from clipctl.recipe import load_recipe

LOSSES = ("clip", "sogclr", "isogclr_new")
TARGET_GCL_OVER_CLIP = 1.03
# Share of the measured matmul rate the training step achieves; the small quickstart towers and the
# optimizer's elementwise work keep a CPU step well below pure-matmul speed, so 30% is the floor, not a hope.
TARGET_MFU = 0.30
MODELS = {
    "quickstart": ("quickstart", [], 128),
    "paper": (
        "isogclr_radam",
        ["model.image_pretrained=false", "model.text_pretrained=false", "data.image_size=224"],
        8,
    ),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, precision: str, size: int = 2048, repeats: int = 5) -> float:
    """Achieved FLOP/s of a square matmul in this precision on this device right now."""
    a = torch.randn(size, size, device=device, dtype=DTYPES[precision])
    b = torch.randn(size, size, device=device, dtype=DTYPES[precision])
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def build(
    kind: str,
    loss_name: str,
    num_samples: int,
    device: torch.device = torch.device("cpu"),
    image_size: int | None = None,
    extra: tuple[str, ...] = (),
    tokenizer: TextTokenizer | None = None,
):
    """One tower set with one loss and its optimizer; `extra` are further recipe overrides (e.g. channels-last);
    `tokenizer` sizes the text tower as the trainer does (default: the recipe's vocabulary size, pad id 0)."""
    name, overrides, batch = MODELS[kind]
    resized = [f"data.image_size={image_size}"] if image_size else []
    recipe = load_recipe(name, [*overrides, *resized, f"loss.name={loss_name}", *extra])
    torch.manual_seed(0)
    vocab = {"vocab_size": 1000 if kind == "quickstart" else 30522, "pad_id": 0}
    if tokenizer is not None:
        vocab = {"vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.pad_id, "max_len": tokenizer.max_len}
    model = build_model(recipe.model, **vocab, load_weights=False)
    loss = build_loss(
        recipe.loss, num_samples=num_samples, total_epochs=recipe.train.epochs, embed_dim=recipe.model.embed_dim
    )
    model, loss = model.to(device), loss.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return recipe, model, loss, optimizer, batch


def make_batches(
    recipe, batch: int, count: int, device: torch.device = torch.device("cpu"), vocab_size: int = 1000
) -> list[tuple[torch.Tensor, ...]]:
    """Seeded random images and token ids (none of them the pad id 0 or the last id of `vocab_size`)."""
    size, length = recipe.data.image_size, recipe.data.max_text_len
    generator = torch.Generator().manual_seed(0)
    return [
        tuple(
            t.to(device)
            for t in (
                torch.randn(batch, 3, size, size, generator=generator),
                torch.randint(1, vocab_size - 1, (batch, length), generator=generator),
                torch.arange(i * batch, (i + 1) * batch),
            )
        )
        for i in range(count)
    ]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The trainer's mixed precision: towers under autocast, the loss in float32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def step(
    model, loss, optimizer, batch, epoch: int, precision: str = "fp32", stats: bool = True, channels_last: bool = False
) -> torch.Tensor:
    """One update as the trainer's `_update` makes it (`stats=False`: a step between logging steps; `channels_last`:
    the images converted inside the step, as the trainer does for `model.channels_last`); returns the loss."""
    images, tokens, index = batch
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(images.device, precision):
        image_features, text_features = model(images, tokens)
    with record_function("loss"):  # the phases, named for bench/profile_step.py (no cost without a profiler)
        out = loss(image_features.float(), text_features.float(), index, epoch=epoch, stats=stats)
    with record_function("backward"):
        out.loss.backward()
    with record_function("optimizer"):
        loss.reduce_gradients()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.after_optimizer_step()
    return out.loss.detach()


def flops_per_sample(model, batch) -> float:
    images, tokens, _ = batch
    with FlopCounterMode(display=False) as counter:
        image_features, text_features = model(images, tokens)
        (image_features.sum() + text_features.sum()).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / images.shape[0]


def measure(
    kind: str,
    losses: list[str],
    steps: int,
    rounds: int,
    device: torch.device,
    precision: str,
    batch: int | None = None,
    image_size: int | None = None,
) -> dict[str, Any]:
    batch = batch or MODELS[kind][2]
    setups = {name: build(kind, name, steps * batch, device, image_size) for name in losses}
    recipe = next(iter(setups.values()))[0]
    batches = make_batches(recipe, batch, steps, device)
    peak_memory: dict[str, float | None] = {}
    step_memory: dict[str, float | None] = {}
    for name, (_, model, loss, optimizer, _) in setups.items():  # epoch 1 exercises the moving average
        on_gpu = device.type == "cuda"
        # a warm-up step first: the optimizer state and cuBLAS workspaces it allocates stay resident, so the
        # measured step shows what every later step needs, not the one-off first-step allocations
        step(model, loss, optimizer, batches[0], epoch=1, precision=precision)
        synchronize(device)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device) if on_gpu else 0
        step(model, loss, optimizer, batches[0], epoch=1, precision=precision)
        synchronize(device)
        # peak: everything allocated (every loss's model is resident); step: what this loss's step adds on top
        peak = torch.cuda.max_memory_allocated(device) if on_gpu else None
        peak_memory[name] = None if peak is None else peak / 2**30
        step_memory[name] = None if peak is None else (peak - resident) / 2**30
    times: dict[str, list[float]] = {name: [] for name in losses}
    for round_index in range(rounds):  # interleave losses, each round starting with the next, so drift hits all alike
        shift = round_index % len(losses)
        for name in losses[shift:] + losses[:shift]:
            _, model, loss, optimizer, _ = setups[name]
            synchronize(device)
            start = time.perf_counter()
            for b in batches:
                step(model, loss, optimizer, b, epoch=1, precision=precision)
            synchronize(device)
            times[name].append((time.perf_counter() - start) / len(batches))
    step_time = {name: statistics.median(t) for name, t in times.items()}
    reference = losses[0]
    with autocast(device, precision):
        flops = flops_per_sample(setups[reference][1], batches[0])
    return {
        "batch": batch,
        "image_size": recipe.data.image_size,
        "step_seconds": step_time,
        "samples_per_s": {name: batch / t for name, t in step_time.items()},
        "ratio_vs_clip": {name: t / step_time["clip"] for name, t in step_time.items()} if "clip" in step_time else {},
        "model_flops_per_sample": flops,
        "peak_memory_gib": peak_memory,
        "step_peak_over_resident_gib": step_memory,
    }


def throughput_checks(models: dict[str, dict[str, Any]], precision: str) -> list[dict[str, Any]]:
    checks = []
    paper = models.get("paper")
    gcl = [n for n in ("sogclr", "isogclr_new") if n in paper["ratio_vs_clip"]] if paper else []
    if gcl:
        worst = max(gcl, key=lambda n: paper["ratio_vs_clip"][n])
        checks.append(
            check(
                f"GCL / CLIP step, paper b{paper['batch']} {precision} (worst: {worst})",
                paper["ratio_vs_clip"][worst],
                "<=",
                TARGET_GCL_OVER_CLIP,
            )
        )
    for kind, result in models.items():
        name = "clip" if "clip" in result["mfu"] else next(iter(result["mfu"]))
        checks.append(
            check(f"MFU, {kind} towers, {name} {precision}", result["mfu"][name], ">=", TARGET_MFU, unit="fraction")
        )
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="steps per loss per round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the median round counts")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="fp32", choices=list(DTYPES))
    parser.add_argument("--batch", type=int, help="batch size for every model (default: quickstart 128, paper 8)")
    parser.add_argument("--image-size", type=int, help="image side for every model (default: quickstart 64, paper 224)")
    parser.add_argument(
        "--matmul-size", type=int, default=2048, help="side of the square matmul that sets the MFU scale"
    )
    parser.add_argument("--name", default="train_throughput", help="result file name under bench/results/")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rate = matmul_rate(device, args.precision, args.matmul_size)
    results: dict[str, Any] = {
        "machine": platform.machine(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "torch": torch.__version__,
        "versions": package_versions(),
        f"{args.precision}_matmul_flops": rate,
        "models": {},
    }
    for kind in args.models:
        result = measure(
            kind, args.losses, args.steps, args.rounds, device, args.precision, args.batch, args.image_size
        )
        result["mfu"] = {
            name: result["model_flops_per_sample"] * sps / rate for name, sps in result["samples_per_s"].items()
        }
        results["models"][kind] = result
        ratios = " ".join(f"{n}={r:.3f}x" for n, r in result["ratio_vs_clip"].items())
        memory = " ".join(f"{n}={m:.1f}GiB" for n, m in result["step_peak_over_resident_gib"].items() if m is not None)
        print(
            f"{kind}: batch {result['batch']} @ {result['image_size']}px {args.precision}  samples/s "
            + " ".join(f"{n}={s:.1f}" for n, s in result["samples_per_s"].items())
            + f"  step time vs clip: {ratios}  MFU: "
            + " ".join(f"{n}={100 * m:.1f}%" for n, m in result["mfu"].items())
            + (f"  step memory: {memory}" if memory else "")
        )
    checks = throughput_checks(results["models"], args.precision)
    write_result(args.name, results, checks)
    print_checks(checks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
