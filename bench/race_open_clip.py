"""The race against open_clip on the CPU: the same towers trained by clipctl and by open_clip, fp32 and at best.

Both sides hold the same weights: the quickstart recipe's towers (clipctl.model.clip.build_model) are exported with
`clipctl export --format open_clip`'s own code (a checkpoint of the built model, then
`clipctl.interop.export.export_model`, which verifies the copy through open_clip) and open_clip builds its
`CustomTextCLIP` from that folder (`local-dir:`, DistilBERT through the shim `clipctl.interop.open_clip`).

(a) Model step, one process: forward, loss, backward and optimizer step on the same synthetic batches. clipctl: the
    trainer's update (`train_throughput.step`: towers under autocast, loss `--loss` in float32 without logging
    statistics, the optimizer the trainer builds: timm's, weight decay on matrices only). open_clip: its training
    step (towers and `ClipLoss` under its autocast, torch AdamW with open_clip's parameter groups, the logit scale
    clamped). Interleaved rounds, each starting with the other side, so drift in the machine's load hits both alike;
    the median round counts.
(b) Trainer end to end: `clipctl train quickstart` against `python -m open_clip_train.main` (the shim imported first)
    on the same images and captions (the first steps x batch pairs of shapes' train split, a JSON for clipctl, a CSV
    for open_clip), the same batch size, number of updates, loader workers and precision, no evaluation, no
    checkpoints, both logging every step. Steady state: the median of the per-step samples/s each trainer logs
    (fetch + update; clipctl's metrics.jsonl, open_clip's log), the first `--warmup-steps` left out; start-up and
    teardown (process wall time less the logged steps) are recorded apart. Runs alternate sides, as in (a).

Precisions: fp32 on both sides, and "best": on a CPU with bf16 matrix instructions (`cpu_bf16_matmul`), clipctl in
bf16 autocast + channels-last (bench/results/precision.json's fastest) and open_clip in `amp_bf16` (open_clip has no
channels-last option); elsewhere both in fp32. Ratios are clipctl speed / open_clip speed. The load
(/proc/loadavg) is recorded before and after. Writes bench/results/race_open_clip.json.

    python bench/race_open_clip.py [--precisions fp32 best] [--loss clip] [--batch 128] [--steps 3] [--rounds 5]
                                   [--skip-trainer] [--trainer-steps 40] [--trainer-rounds 2] [--warmup-steps 3]
                                   [--workers 1] [--shapes DIR]

The trainers read `--shapes DIR`, else the data root's shapes folder when it holds enough pairs, else a shapes folder
generated for the race in a temporary folder (64 px, as the quickstart's).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import check, print_checks, write_result
from precision import cpu_flags, loadavg
from train_throughput import MODELS, autocast, build, make_batches, step

from clipctl.data.shapes import CLASSNAMES, TEMPLATES, ShapesConfig, generate_shapes
from clipctl.data.text import TextTokenizer, build_tokenizer
from clipctl.doctor import package_versions
from clipctl.interop.export import export_model
from clipctl.model.cpu_precision import cpu_bf16_matmul
from clipctl.paths import data_root
from clipctl.recipe import Recipe, load_recipe
from clipctl.run.checkpoint import save_checkpoint
from clipctl.train.optim import build_optimizer
from clipctl.train.temperature import inference_temperature

TARGET_MODEL_STEP = 1.05
TARGET_TRAINER = 1.2
SIDES = ("clipctl", "open_clip")
# What `python -m open_clip_train.main` runs, with the DistilBERT shim imported before open_clip builds a model.
OPEN_CLIP_MAIN = (
    "import runpy, sys, clipctl.interop.open_clip; sys.argv[0] = 'open_clip_train.main'; "
    "runpy.run_module('open_clip_train.main', run_name='__main__', alter_sys=True)"
)
OPEN_CLIP_STEP_LOG = re.compile(r"Batch \(t\): [0-9.]+, ([0-9.e+]+)/s")


def precision_settings(name: str) -> dict[str, Any]:
    """One precision of the race for both sides: autocast dtype and channels-last for clipctl, open_clip's flag."""
    best = name == "best" and cpu_bf16_matmul()
    return {
        "clipctl": {"autocast": "bf16" if best else "fp32", "channels_last": best},
        "open_clip": {"autocast": "bf16" if best else "fp32", "precision": "amp_bf16" if best else "fp32"},
    }


# --------------------------------------------------------------------------------- the same towers in open_clip


def caption_tokenizer(recipe: Recipe, captions: list[str]) -> TextTokenizer:
    """The recipe's tokenizer learned on `captions`, as `clipctl train` builds it from its training captions."""
    return build_tokenizer(recipe.model, recipe.data.max_text_len, captions)


def export_open_clip(recipe: Recipe, model, loss, tokenizer: TextTokenizer, folder: Path) -> Path:
    """`folder`: the model as `clipctl export --format open_clip` writes it (and verifies it through open_clip)."""
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = Path(scratch) / "ckpt.pt"
        save_checkpoint(
            checkpoint,
            model_state=model.state_dict(),
            recipe_toml=recipe.to_toml(),
            tokenizer_json=tokenizer.to_json(),
            tokenizer_max_len=tokenizer.max_len,
            metrics={},
            epoch=0,
            temperature=inference_temperature(loss),
            preprocess=recipe.preprocess().to_record(),
        )
        export_model(checkpoint, folder, "open_clip")
    return folder


def open_clip_side(folder: Path, recipe: Recipe):
    """open_clip's model (the exported weights), `ClipLoss` and AdamW with open_clip_train's parameter groups."""
    import open_clip

    import clipctl.interop.open_clip  # noqa: F401  (the shim: DistilBERT text towers)

    model = open_clip.create_model(f"local-dir:{folder}")
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = [p for n, p in named if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n]
    decay = [p for n, p in named if not any(p is q for q in no_decay)]
    optimizer = torch.optim.AdamW(
        [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": recipe.optim.weight_decay}],
        lr=recipe.optim.lr,
        betas=tuple(recipe.optim.betas),
        eps=recipe.optim.eps,
    )
    return model, open_clip.ClipLoss(), optimizer


def open_clip_step(model, loss, optimizer, batch, precision: str) -> torch.Tensor:
    """open_clip_train's update: towers and loss under autocast, backward, step, the logit scale clamped."""
    images, tokens, _ = batch
    optimizer.zero_grad()
    with autocast(images.device, precision):
        image_features, text_features, logit_scale = model(images, tokens)
        total = loss(image_features, text_features, logit_scale)
    total.backward()
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return total.detach()


# ------------------------------------------------------------------------------------------- (a) model step


def model_step_sides(loss_name: str, batch: int, steps: int, name: str, workdir: Path):
    """Both sides' step functions on the same weights at precision `name`, and the batches they step on."""
    settings = precision_settings(name)
    extra = ("model.channels_last=true",) if settings["clipctl"]["channels_last"] else ()
    captions = [template.format(label) for template in TEMPLATES for label in CLASSNAMES]  # shapes' own words
    tokenizer = caption_tokenizer(load_recipe("quickstart"), captions)
    recipe, model, loss, _, _ = build("quickstart", loss_name, steps * batch, extra=extra, tokenizer=tokenizer)
    optimizer = build_optimizer(model, loss.param_groups(recipe.optim.lr), recipe.optim)
    folder = export_open_clip(recipe, model, loss, tokenizer, workdir / f"step_open_clip_{name}")
    theirs = open_clip_side(folder, recipe)
    batches = make_batches(recipe, batch, steps, vocab_size=tokenizer.vocab_size)
    ours_cfg, theirs_cfg = settings["clipctl"], settings["open_clip"]

    def ours_step(b):
        return step(model, loss, optimizer, b, 1, ours_cfg["autocast"], stats=False, channels_last=extra != ())

    def theirs_step(b):
        return open_clip_step(*theirs, b, theirs_cfg["autocast"])

    difference = feature_difference(model, theirs[0], batches[0])
    return {"clipctl": ours_step, "open_clip": theirs_step}, batches, difference


@torch.no_grad()
def feature_difference(model, open_clip_model, batch) -> dict[str, float]:
    """Largest deviation of open_clip's normalised features from clipctl's on a race batch, in eval mode (no
    dropout), float32: the evidence that both sides step the same towers."""
    images, tokens, _ = batch
    model.eval(), open_clip_model.eval()
    try:
        pairs = {
            "image": (model.encode_image(images), open_clip_model.encode_image(images, normalize=True)),
            "text": (model.encode_text(tokens), open_clip_model.encode_text(tokens, normalize=True)),
        }
        return {name: float((ours - theirs).abs().max()) for name, (ours, theirs) in pairs.items()}
    finally:
        model.train(), open_clip_model.train()


def race_model_step(loss_name: str, batch: int, steps: int, rounds: int, precision: str, workdir: Path):
    settings = precision_settings(precision)
    steppers, batches, difference = model_step_sides(loss_name, batch, steps, precision, workdir)
    for side in SIDES:  # warm-up: the optimizer state is allocated in the first step
        steppers[side](batches[0])
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    for round_index in range(rounds):
        for side in SIDES[round_index % 2 :] + SIDES[: round_index % 2]:
            start = time.perf_counter()
            for b in batches:
                steppers[side](b)
            times[side].append((time.perf_counter() - start) / len(batches))
    step_time = {side: statistics.median(t) for side, t in times.items()}
    speed = {side: batch / t for side, t in step_time.items()}
    return {
        "settings": settings,
        "batch": batch,
        "steps_per_round": steps,
        "rounds": rounds,
        "feature_difference_fp32": difference,
        "step_seconds": step_time,
        "step_seconds_rounds": times,
        "samples_per_s": speed,
        "ratio": speed["clipctl"] / speed["open_clip"],
    }


# ---------------------------------------------------------------------------------------- (b) trainer end to end


def race_pairs(shapes: Path, count: int) -> list[dict[str, Any]]:
    """The first `count` training pairs of a generated shapes folder."""
    return json.loads((shapes / "train.json").read_text(encoding="utf-8"))[:count]


def write_race_data(shapes: Path, pairs: list[dict[str, Any]], folder: Path) -> tuple[Path, Path]:
    """The same pairs twice: a clipctl pairs JSON (images relative to `shapes`) and open_clip's tab-separated CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs_json = folder / "pairs.json"
    pairs_json.write_text(json.dumps(pairs), encoding="utf-8")
    pairs_csv = folder / "pairs.csv"
    with pairs_csv.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, delimiter="\t")
        writer.writerow(["filepath", "title"])
        writer.writerows([str((shapes / p["image"]).resolve()), p["caption"]] for p in pairs)
    return pairs_json, pairs_csv


def clipctl_command(args, shapes: Path, pairs_json: Path, out: Path, name: str, settings: dict[str, Any]) -> list[str]:
    """`clipctl train quickstart` on the race pairs: `--trainer-steps` updates in its first epoch, which is not the
    last one and no evaluation epoch, so it neither evaluates nor saves a checkpoint; every step logged."""
    overrides = {
        "data.train": pairs_json,
        "data.image_root": shapes,
        "data.num_workers": args.workers,
        "loss.name": args.loss,
        "train.batch_size": args.batch,
        "train.max_steps": args.trainer_steps,
        "train.epochs": 2,
        "train.precision": "bf16" if settings["autocast"] == "bf16" else "no",
        "model.channels_last": str(settings["channels_last"]).lower(),
        "eval.every_epochs": 1000,
        "eval.val_retrieval": shapes / "val.json",
        "eval.val_zeroshot": shapes / "zeroshot_val",
        "eval.test_retrieval": shapes / "test.json",
        "eval.test_zeroshot": shapes / "zeroshot",
        "tracking.log_every_steps": 1,
    }
    sets = [f"{key}={value}" for key, value in overrides.items()]
    return [sys.executable, "-m", "clipctl", "train", "quickstart", *sets, "--out", str(out), "--name", name]


def open_clip_command(
    args, recipe: Recipe, pairs_csv: Path, export: Path, logs: Path, name: str, settings: dict[str, Any]
) -> list[str]:
    """open_clip_train.main on the same pairs (exactly `--trainer-steps` batches in its one epoch), no evaluation,
    no checkpoints, every step logged; learning rate and weight decay the recipe's."""
    optim = recipe.optim
    return [
        sys.executable,
        "-c",
        OPEN_CLIP_MAIN,
        *("--train-data", str(pairs_csv), "--dataset-type", "csv", "--csv-separator", "\t"),
        *("--csv-img-key", "filepath", "--csv-caption-key", "title"),
        *("--model", f"local-dir:{export}", "--device", "cpu", "--precision", settings["precision"]),
        *("--batch-size", str(args.batch), "--epochs", "1", "--workers", str(args.workers)),
        *("--lr", str(optim.lr), "--wd", str(optim.weight_decay), "--warmup", "10", "--seed", "0"),
        *("--save-frequency", "0", "--zeroshot-frequency", "0", "--log-every-n-steps", "1"),
        *("--logs", str(logs), "--name", name),
    ]


def timed_run(command: list[str]) -> float:
    """Wall seconds of one trainer process; a failure stops the race with its last lines."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-15:])
        raise RuntimeError(f"{command[1:4]} exited {done.returncode}:\n{tail}")
    return time.perf_counter() - start


def clipctl_step_speeds(run_dir: Path) -> list[float]:
    """Per-step samples/s of a clipctl run logging every step; a run that evaluated is not a like-for-like entry."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if any(r.get("type") != "train" for r in records):
        raise RuntimeError(f"{run_dir}: the clipctl run evaluated; the trainer race runs without evaluation")
    return [r["samples_per_s"] for r in records]


def open_clip_step_speeds(log: Path) -> list[float]:
    return [float(m.group(1)) for m in OPEN_CLIP_STEP_LOG.finditer(log.read_text())]


def steady(speeds: list[float], batch: int, wall: float, warmup: int) -> dict[str, Any]:
    """Steady-state samples/s (median past the warm-up steps) and the time spent outside the logged steps."""
    kept = speeds[warmup:] or speeds
    return {
        "samples_per_s": statistics.median(kept),
        "steps_logged": len(speeds),
        "first_step_seconds": batch / speeds[0],
        "wall_seconds": wall,
        "startup_and_teardown_seconds": wall - sum(batch / s for s in speeds),
    }


def race_trainer(args, precision: str, shapes: Path, workdir: Path) -> dict[str, Any]:
    """Both trainers `--trainer-rounds` times at `precision` on the same pairs, alternating which starts a round."""
    settings = precision_settings(precision)
    pairs = race_pairs(shapes, args.trainer_steps * args.batch)
    pairs_json, pairs_csv = write_race_data(shapes, pairs, workdir / f"data_{precision}")
    tokenizer = caption_tokenizer(load_recipe("quickstart"), [p["caption"] for p in pairs])  # as `clipctl train`'s
    recipe, model, loss, _, _ = build("quickstart", args.loss, len(pairs), tokenizer=tokenizer)
    export = export_open_clip(recipe, model, loss, tokenizer, workdir / f"trainer_open_clip_{precision}")
    commands = {
        "clipctl": lambda name: clipctl_command(args, shapes, pairs_json, workdir / "runs", name, settings["clipctl"]),
        "open_clip": lambda name: open_clip_command(
            args, recipe, pairs_csv, export, workdir / "logs", name, settings["open_clip"]
        ),
    }
    readers = {
        "clipctl": lambda name: clipctl_step_speeds(workdir / "runs" / name),
        "open_clip": lambda name: open_clip_step_speeds(workdir / "logs" / name / "out.log"),
    }
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for round_index in range(args.trainer_rounds):
        for side in SIDES[round_index % 2 :] + SIDES[: round_index % 2]:
            name = f"{side}_{precision}_{round_index}"
            wall = timed_run(commands[side](name))
            runs[side].append(steady(readers[side](name), args.batch, wall, args.warmup_steps))
    speed = {side: statistics.median(r["samples_per_s"] for r in runs[side]) for side in SIDES}
    return {
        "settings": settings,
        "batch": args.batch,
        "steps": args.trainer_steps,
        "workers": args.workers,
        "warmup_steps": args.warmup_steps,
        "runs": runs,
        "samples_per_s": speed,
        "startup_and_teardown_seconds": {
            side: statistics.median(r["startup_and_teardown_seconds"] for r in runs[side]) for side in SIDES
        },
        "ratio": speed["clipctl"] / speed["open_clip"],
    }


# --------------------------------------------------------------------------------------------------- main


def race_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for measure, target, label in (("model_step", TARGET_MODEL_STEP, "model step"), ("trainer", TARGET_TRAINER, "")):
        for precision, result in results.get(measure, {}).items():
            what = label or f"trainer end to end, {result['workers']} worker(s)"
            name = f"clipctl / open_clip {what}, {precision} (b{result['batch']})"
            checks.append(check(name, result["ratio"], ">=", target))
    return checks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "best"], choices=["fp32", "best"])
    parser.add_argument("--loss", default="clip", help="clipctl's loss (open_clip trains ClipLoss)")
    parser.add_argument("--batch", type=int, default=MODELS["quickstart"][2], help="batch size (the recipe's)")
    parser.add_argument("--steps", type=int, default=3, help="model-step updates per side per round")
    parser.add_argument("--rounds", type=int, default=5, help="model-step interleaved rounds; the median counts")
    parser.add_argument("--skip-trainer", action="store_true", help="only the model step (b is minutes)")
    parser.add_argument("--trainer-steps", type=int, default=40, help="updates per trainer run")
    parser.add_argument("--trainer-rounds", type=int, default=2, help="trainer runs per side per precision")
    parser.add_argument("--warmup-steps", type=int, default=3, help="first logged steps left out of the median")
    parser.add_argument("--workers", type=int, default=1, help="data loader workers on both sides")
    parser.add_argument(
        "--shapes",
        type=Path,
        help="a generated shapes folder (default: <data root>/shapes when it holds enough pairs, else one generated "
        "for the race in a temporary folder)",
    )
    args = parser.parse_args(argv)
    if args.skip_trainer:
        return args
    if importlib.util.find_spec("pandas") is None:
        parser.error("open_clip_train's data module needs pandas: pip install pandas, or pass --skip-trainer")
    needed = args.trainer_steps * args.batch
    if args.shapes is None:
        local = data_root() / "shapes"
        args.shapes = local if (local / "train.json").is_file() and len(race_pairs(local, needed)) == needed else None
        return args
    train = args.shapes / "train.json"
    if not train.is_file():
        parser.error(f"{train}: not there; run `clipctl data fetch shapes` or pass --shapes DIR")
    if len(race_pairs(args.shapes, needed)) < needed:
        parser.error(f"{train}: fewer pairs than --trainer-steps x --batch; lower them or use a larger shapes")
    return args


def race_shapes(args: argparse.Namespace, workdir: Path) -> Path:
    """The shapes folder the trainers read: --shapes, the data root's, or one generated here (64 px, as the
    quickstart's) with just the training pairs the race needs and a few evaluation images the recipe names."""
    if args.shapes is not None:
        return args.shapes.resolve()
    config = ShapesConfig(
        train_size=max(args.trainer_steps * args.batch, 100),
        eval_images=8,
        zeroshot_val_per_class=1,
        zeroshot_per_class=1,
    )
    generate_shapes(workdir / "data", config, workers=1)
    return workdir / "data" / "shapes"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, Any] = {
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "versions": {**package_versions(), "open_clip_torch": _version("open_clip_torch")},
        "cpu": cpu_flags(),
        "loss": args.loss,
        "loadavg_before": loadavg(),
        "model_step": {},
    }
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        for precision in args.precisions:
            result = race_model_step(args.loss, args.batch, args.steps, args.rounds, precision, workdir)
            results["model_step"][precision] = result
            print(f"model step {precision}: " + _speeds(result))
        if not args.skip_trainer:
            results["trainer"] = {}
            shapes = race_shapes(args, workdir)
            results["trainer_shapes"] = str(args.shapes or "generated for the race (64 px)")
            for precision in args.precisions:
                result = race_trainer(args, precision, shapes, workdir)
                results["trainer"][precision] = result
                print(f"trainer {precision}: " + _speeds(result))
    results["loadavg_after"] = loadavg()
    checks = race_checks(results)
    write_result("race_open_clip", results, checks)
    print_checks(checks)
    return 0


def _speeds(result: dict[str, Any]) -> str:
    speeds = " ".join(f"{side}={s:.1f}" for side, s in result["samples_per_s"].items())
    return f"samples/s {speeds}  clipctl/open_clip {result['ratio']:.3f}x"


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
