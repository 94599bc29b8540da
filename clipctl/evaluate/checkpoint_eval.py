"""`clipctl eval`: rebuild a model from its self-contained checkpoint and report the test metrics.

Nothing outside the checkpoint is needed to rebuild the model (recipe, tokenizer and weights are in it,
loaded with `weights_only=True`); only the evaluation datasets come from the data root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipctl.atomic import atomic_write_json
from clipctl.data.datasets import ClassificationDataset, RetrievalDataset
from clipctl.data.registry import resolve
from clipctl.data.text import TextTokenizer
from clipctl.data.transforms import eval_transform
from clipctl.errors import UsageError
from clipctl.evaluate.objective import objective
from clipctl.evaluate.splits import evaluate_split
from clipctl.model.clip import CLIPModel, build_model
from clipctl.model.config import ModelConfig
from clipctl.paths import data_root
from clipctl.recipe import Recipe, validate_recipe
from clipctl.run.checkpoint import load_checkpoint, recorded_temperature
from clipctl.run.layout import EVAL_DIR

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the `tomli` backport (a dependency there) has the same API
    import tomli as tomllib

# Benchmark name -> (retrieval dataset, zero-shot dataset) of the test splits clipctl reports. `imagenet` is the
# four fifths of ImageNet val that selection never sees; `imagenet-full` is all 50k, as the published figures used.
BENCHMARKS: dict[str, tuple[str | None, str | None]] = {
    "coco": ("coco-karpathy-test", None),
    "imagenet": (None, "imagenet-val:test"),
    "imagenet-full": (None, "imagenet-val"),
    "shapes": ("shapes:test", "shapes:zeroshot"),
}
NOTES = {
    "imagenet": "zero-shot on imagenet-val:test, the 40k images model selection never sees",
    "imagenet-full": "zero-shot on all 50k imagenet-val images (published-figure parity; includes the selection fifth)",
}


@dataclass
class LoadedCheckpoint:
    path: Path
    recipe: Recipe
    tokenizer: TextTokenizer
    model: CLIPModel
    epoch: int
    temperature: tuple[float, str] | None = None  # as recorded by the trainer; None in older checkpoints


def load_for_eval(path: Path, device: torch.device) -> LoadedCheckpoint:
    """The model of a clipctl checkpoint, on `device`, in eval mode; foreign or corrupt files are one-line errors."""
    ckpt = load_checkpoint(path)
    try:
        raw = tomllib.loads(ckpt["recipe_toml"])
    except (KeyError, TypeError, tomllib.TOMLDecodeError):
        raise UsageError(
            f"{path}: the checkpoint's embedded recipe is missing or unreadable; it is not a clipctl checkpoint"
        ) from None
    recipe = validate_recipe(raw, f"{path} (embedded recipe)", explicit_loss_keys=set())
    tokenizer = TextTokenizer.from_json(ckpt["tokenizer_json"], int(ckpt["tokenizer_max_len"]))
    model = model_with_weights(recipe.model, tokenizer, ckpt["model"], path, device)
    return LoadedCheckpoint(path, recipe, tokenizer, model, int(ckpt.get("epoch", -1)), recorded_temperature(ckpt))


def model_with_weights(
    model_cfg: ModelConfig, tokenizer: TextTokenizer, state: dict[str, torch.Tensor], where: Path, device: torch.device
) -> CLIPModel:
    """The CLIP module of `model_cfg` holding `state` exactly (strict), on `device`, in eval mode."""
    model = build_model(
        model_cfg,
        vocab_size=tokenizer.vocab_size,
        pad_id=tokenizer.pad_id,
        load_weights=False,
        max_len=tokenizer.max_len,
    )
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UsageError(f"{where}: weights do not fit the model its recipe describes ({first[:160]})") from None
    return model.to(device).eval()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# Over 60 lines: signature and docstring are a third of it; one pass per benchmark.
def evaluate_checkpoint(
    path: Path,
    benchmarks: list[str],
    *,
    device: torch.device | None = None,
    root: Path | None = None,
    progress: bool = True,
    max_missing: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics per benchmark (fractions), written to `eval/<benchmark>.json` beside the checkpoint.

    More than `max_missing` (default: the checkpoint recipe's `eval.max_missing`) missing or unreadable
    images in a benchmark is a DataError (exit 3); each result says how many images it scored out of how many.
    With both `coco` and `imagenet`, a `combined` entry holds the report's objective over the two.
    """
    if not benchmarks:
        raise UsageError("clipctl eval: choose at least one of --coco, --imagenet, --imagenet-full, --shapes")
    device = device or default_device()
    loaded = load_for_eval(path, device)
    recipe = loaded.recipe
    root = root or data_root(recipe.data.root)
    transform = eval_transform(recipe.data.image_size, recipe.eval.normalize)
    datasets = {}
    for name in benchmarks:  # resolve every dataset first: a missing one fails before any encoding
        retrieval_ref, zeroshot_ref = BENCHMARKS[name]
        datasets[name] = (retrieval_ref and resolve(retrieval_ref, root), zeroshot_ref and resolve(zeroshot_ref, root))
    results: dict[str, dict[str, Any]] = {}
    for name, (retrieval_path, zeroshot_path) in datasets.items():
        retrieval = RetrievalDataset(retrieval_path, transform) if retrieval_path else None
        classification = ClassificationDataset(zeroshot_path, transform) if zeroshot_path else None
        metrics = evaluate_split(
            loaded.model,
            loaded.tokenizer,
            retrieval,
            classification,
            batch_size=recipe.eval.batch_size,
            chunk_size=recipe.eval.chunk_size,
            num_workers=recipe.data.num_workers,
            device=device,
            prefix="",
            precision="auto" if device.type == "cuda" else "no",
            progress=progress,
            max_missing=recipe.eval.max_missing if max_missing is None else max_missing,
        )
        metrics.update(
            checkpoint=str(path),
            epoch=loaded.epoch,
            retrieval_source=BENCHMARKS[name][0],
            zeroshot_source=BENCHMARKS[name][1],
        )
        atomic_write_json(path.parent / EVAL_DIR / f"{name}.json", metrics, indent=2)
        results[name] = metrics
    if "coco" in results and "imagenet" in results:
        coco, imagenet = results["coco"], results["imagenet"]
        results["combined"] = {
            "tr@1": coco["tr@1"],
            "ir@1": coco["ir@1"],
            "acc@1": imagenet["acc@1"],
            "objective": objective(coco["tr@1"], coco["ir@1"], imagenet["acc@1"]),
        }
    return results
