"""`clipctl embed` of 10,000 shapes images against `clipctl eval`'s encoding rate on the same images, side by side:
images/s of each and their ratio. Writes bench/results/embed_speed.json, with /proc/loadavg before and after.

    python bench/embed_speed.py [--images 10000] [--repeats 3] [--workers 1] [--batch-size 256]

Setup (not timed): a shapes dataset whose test split holds `--images` 64-px images (one caption each, a minimal
zero-shot split), and a checkpoint of the quickstart architecture (test_resnet + 2-layer DistilBERT; untrained
weights: the speed does not depend on them) whose recipe sets data.num_workers = --workers and eval.batch_size =
--batch-size, the settings both commands read. Then, per repeat and in alternating order, each in a fresh process:
  eval   `clipctl eval CKPT --shapes --json`: its images_per_s (all images it encodes over their encoding time,
         data loading included; the test split is all but 64 of them)
  embed  `clipctl embed CKPT --images DATA/shapes/test --out X.npy --json`: its items_per_s (the same definition)
Target: embed's median rate >= 0.9 x eval's. On a loaded machine the numbers mean little: the script records the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, check, write_result

from clipctl.console import info, print_table
from clipctl.data.shapes import ShapesConfig, generate_shapes
from clipctl.data.text import train_wordpiece
from clipctl.model.clip import build_model
from clipctl.recipe import load_recipe
from clipctl.run.checkpoint import save_checkpoint

TARGET = 0.9


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unavailable"


def prepare(folder: Path, images: int, workers: int, batch_size: int) -> tuple[Path, Path]:
    """(data root holding shapes/, checkpoint) for the run."""
    data = folder / "data"
    config = ShapesConfig(
        train_size=100, eval_images=images, captions_per_image=1, zeroshot_val_per_class=1, zeroshot_per_class=1
    )
    generate_shapes(data, config)
    recipe = load_recipe(
        "quickstart", [f"data.num_workers={workers}", f"eval.batch_size={batch_size}", "data.image_size=64"]
    )
    entries = json.loads((data / "shapes" / "test.json").read_text())
    tokenizer = train_wordpiece(
        (c for e in entries for c in e["caption"]), recipe.model.vocab_size, recipe.data.max_text_len
    )
    model = build_model(recipe.model, tokenizer.vocab_size, tokenizer.pad_id, max_len=tokenizer.max_len)
    ckpt = folder / "ckpt.pt"
    save_checkpoint(
        ckpt,
        model_state=model.state_dict(),
        recipe_toml=recipe.to_toml(),
        tokenizer_json=tokenizer.to_json(),
        tokenizer_max_len=tokenizer.max_len,
        metrics={},
        epoch=0,
    )
    return data, ckpt


def run_clipctl(args: list[str], data: Path) -> dict:
    env = {**os.environ, "CLIPCTL_DATA": str(data), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "clipctl", *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"clipctl {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def measure(variant: str, data: Path, ckpt: Path, scratch: Path) -> float:
    if variant == "eval":
        return float(run_clipctl(["eval", str(ckpt), "--shapes", "--json"], data)["shapes"]["images_per_s"])
    out = scratch / "embed.npy"
    for path in (out, out.with_suffix(".csv")):
        path.unlink(missing_ok=True)
    result = run_clipctl(
        ["embed", str(ckpt), "--images", str(data / "shapes" / "test"), "--out", str(out), "--json"], data
    )
    return float(result["items_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="data.num_workers (the quickstart's 1 by default)")
    parser.add_argument("--batch-size", type=int, default=256, help="eval.batch_size (the quickstart's 256)")
    args = parser.parse_args()
    load_before = loadavg()
    rates: dict[str, list[float]] = {"eval": [], "embed": []}
    with tempfile.TemporaryDirectory(prefix="embed-speed-") as tmp:
        data, ckpt = prepare(Path(tmp), args.images, args.workers, args.batch_size)
        info(f"prepared {args.images} shapes test images and a checkpoint; load average {load_before}")
        for repeat in range(args.repeats):
            order = ("eval", "embed") if repeat % 2 == 0 else ("embed", "eval")
            for variant in order:
                rates[variant].append(measure(variant, data, ckpt, Path(tmp)))
                info(f"repeat {repeat + 1}: {variant} {rates[variant][-1]:.0f} images/s")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    ratio = medians["embed"] / medians["eval"]
    load_after = loadavg()
    print_table(
        f"encoding rate, {args.images} shapes images (median of {args.repeats})",
        ["command", "images/s", "ratio"],
        [
            ("clipctl eval", f"{medians['eval']:.0f}", "1.00"),
            ("clipctl embed", f"{medians['embed']:.0f}", f"{ratio:.2f}"),
        ],
    )
    write_result(
        "embed_speed",
        {
            "images": args.images,
            "repeats": args.repeats,
            "workers": args.workers,
            "batch_size": args.batch_size,
            "images_per_s": rates,
            "median_images_per_s": medians,
            "ratio_embed_to_eval": ratio,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "cpu_count": os.cpu_count(),
        },
        [check("embed / eval encoding rate", ratio, ">=", TARGET)],
    )


if __name__ == "__main__":
    main()
