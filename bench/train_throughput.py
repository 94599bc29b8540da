"""Training-step throughput: clip vs sogclr vs isogclr_new on the quickstart and paper models, plus MFU.

Everything is measured side by side in one process on synthetic batches (the data loader has its own
bench), so the ratios compare like with like. MFU = model FLOPs per sample (torch's FlopCounterMode
over forward + backward) × samples/s ÷ this machine's fp32 matmul rate measured in the same run.
Writes bench/results/train_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from clipctl.losses import build_loss
from clipctl.model import build_model
from clipctl.recipe import load_recipe

LOSSES = ("clip", "sogclr", "isogclr_new")
TARGET_GCL_OVER_CLIP = 1.03
MODELS = {
    "quickstart": ("quickstart", [], 128),
    "paper": ("isogclr_radam", ["model.image_pretrained=false", "model.text_pretrained=false", "data.image_size=224"], 8),
}


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    """Achieved fp32 FLOP/s of a square matmul on this machine right now."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def build(kind: str, loss_name: str, num_samples: int):
    name, overrides, batch = MODELS[kind]
    recipe = load_recipe(name, [*overrides, f"loss.name={loss_name}"])
    torch.manual_seed(0)
    model = build_model(recipe.model, vocab_size=1000 if kind == "quickstart" else 30522, pad_id=0, load_weights=False)
    loss = build_loss(recipe.loss, num_samples=num_samples, total_epochs=recipe.train.epochs, embed_dim=recipe.model.embed_dim)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return recipe, model, loss, optimizer, batch


def make_batches(recipe, batch: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    size, length = recipe.data.image_size, recipe.data.max_text_len
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, size, size, generator=generator),
             torch.randint(1, 999, (batch, length), generator=generator),
             torch.arange(i * batch, (i + 1) * batch)) for i in range(count)]


def step(model, loss, optimizer, batch, epoch: int) -> None:
    images, tokens, index = batch
    image_features, text_features = model(images, tokens)
    out = loss(image_features.float(), text_features.float(), index, epoch=epoch)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def flops_per_sample(model, batch) -> float:
    images, tokens, _ = batch
    with FlopCounterMode(display=False) as counter:
        image_features, text_features = model(images, tokens)
        (image_features.sum() + text_features.sum()).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / images.shape[0]


def measure(kind: str, steps: int, rounds: int) -> dict:
    setups = {name: build(kind, name, num_samples=steps * rounds * 512) for name in LOSSES}
    recipe, _, _, _, batch = setups["clip"]
    batches = make_batches(recipe, batch, steps)
    for name, (_, model, loss, optimizer, _) in setups.items():  # warm-up; epoch 1 exercises the moving average
        step(model, loss, optimizer, batches[0], epoch=1)
    times: dict[str, list[float]] = {name: [] for name in LOSSES}
    for _ in range(rounds):  # interleave losses so machine noise hits them alike
        for name, (_, model, loss, optimizer, _) in setups.items():
            start = time.perf_counter()
            for b in batches:
                step(model, loss, optimizer, b, epoch=1)
            times[name].append((time.perf_counter() - start) / len(batches))
    step_time = {name: statistics.median(t) for name, t in times.items()}
    flops = flops_per_sample(setups["clip"][1], batches[0])
    return {
        "batch": batch,
        "image_size": recipe.data.image_size,
        "step_seconds": step_time,
        "samples_per_s": {name: batch / t for name, t in step_time.items()},
        "ratio_vs_clip": {name: t / step_time["clip"] for name, t in step_time.items()},
        "model_flops_per_sample": flops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_throughput.json")
    args = parser.parse_args()
    rate = matmul_rate()
    results = {"machine": platform.machine(), "threads": torch.get_num_threads(), "fp32_matmul_flops": rate, "models": {}}
    for kind in args.models:
        result = measure(kind, args.steps, args.rounds)
        result["mfu"] = {name: result["model_flops_per_sample"] * sps / rate for name, sps in result["samples_per_s"].items()}
        results["models"][kind] = result
        ratios = " ".join(f"{n}={r:.3f}x" for n, r in result["ratio_vs_clip"].items())
        print(f"{kind}: batch {result['batch']} @ {result['image_size']}px  samples/s clip={result['samples_per_s']['clip']:.1f}  "
              f"step time vs clip: {ratios}  MFU(clip)={100 * result['mfu']['clip']:.1f}%")
    paper = results["models"].get("paper")
    if paper:
        worst = max(paper["ratio_vs_clip"][n] for n in ("sogclr", "isogclr_new"))
        results["target"] = {"gcl_step_over_clip_max": TARGET_GCL_OVER_CLIP, "paper_worst": worst, "met": worst <= TARGET_GCL_OVER_CLIP}
        print(f"paper model: worst GCL/CLIP step ratio {worst:.3f} (target <= {TARGET_GCL_OVER_CLIP}): "
              f"{'met' if worst <= TARGET_GCL_OVER_CLIP else 'missed'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
