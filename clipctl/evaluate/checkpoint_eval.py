"""`clipctl eval`: rebuild a model from its self-contained checkpoint and report the test metrics.

Nothing outside the checkpoint is needed to rebuild the model (recipe, tokenizer, preprocessing and weights are in
it, loaded with `weights_only=True`); only the evaluation datasets come from the data root: `--data-root`, else
`$CLIPCTL_DATA`, else the data.root the checkpoint was trained with, else ./data. What is evaluated comes from the
dataset records (`clipctl.evaluate.benchmarks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipctl.atomic import atomic_write_json
from clipctl.console import info
from clipctl.data.datasets import open_eval_set
from clipctl.data.text import TextTokenizer
from clipctl.errors import UsageError
from clipctl.evaluate.benchmarks import EvalSet, check_request, combined_pair, file_names, plan
from clipctl.evaluate.objective import objective
from clipctl.evaluate.splits import evaluate_split
from clipctl.model.clip import CLIPModel, build_model
from clipctl.model.config import ModelConfig
from clipctl.model.preprocess import Preprocess, image_transform, text_cleaner
from clipctl.paths import chosen_data_root
from clipctl.recipe import Recipe, validate_recipe
from clipctl.run.checkpoint import load_checkpoint, recorded_temperature
from clipctl.run.layout import CHECKPOINT_FILE, EVAL_DIR

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the `tomli` backport (a dependency there) has the same API
    import tomli as tomllib


@dataclass
class LoadedCheckpoint:
    path: Path
    recipe: Recipe
    tokenizer: TextTokenizer
    model: CLIPModel
    epoch: int
    preprocess: Preprocess  # as recorded by the trainer; in older checkpoints, their recipe's
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
    return LoadedCheckpoint(
        path,
        recipe,
        tokenizer,
        model,
        int(ckpt.get("epoch", -1)),
        recorded_preprocess(ckpt, recipe, path),
        recorded_temperature(ckpt),
    )


def recorded_preprocess(ckpt: dict[str, Any], recipe: Recipe, path: Path) -> Preprocess:
    """The preprocessing the model was trained with; a checkpoint written before the record has its recipe's (today's
    defaults: CLIP mean/std, bicubic, the report's caption cleaning, at its data.image_size)."""
    if "preprocess" not in ckpt:
        return recipe.preprocess()
    return Preprocess.from_record(ckpt["preprocess"], str(path))


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


def results_folder(checkpoint: Path) -> Path:
    """`eval/` beside a run's `ckpt.pt`; `eval/<file stem>/` beside any other checkpoint, so that the epoch
    checkpoints of one folder (`checkpoints/epoch_2.pt`, `epoch_3.pt`) do not overwrite each other's results."""
    folder = checkpoint.parent / EVAL_DIR
    return folder if checkpoint.name == CHECKPOINT_FILE else folder / checkpoint.stem


# Over 60 lines: signature and docstring are a third of it; one pass per result row.
def evaluate_checkpoint(
    path: Path,
    benchmarks: Sequence[str] = (),
    *,
    datasets: Sequence[str] = (),
    device: torch.device | None = None,
    root: Path | None = None,
    progress: bool = True,
    max_missing: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics per row (fractions), each written to `<results_folder>/<row>.json` beside the checkpoint.

    `benchmarks`: shorthand names (`coco`, `shapes`, ...); `datasets`: references ("ID[:split]" or a retrieval JSON
    / class folder path). `root`: the data root (default: $CLIPCTL_DATA, else the checkpoint's data.root, else
    ./data; one line says which). More than `max_missing` (default: the checkpoint recipe's `eval.max_missing`)
    missing or unreadable images in a set is a DataError (exit 3); each result says how many images it scored out
    of how many. With a retrieval-only and a zero-shot-only row (`--coco --imagenet`), a `combined` entry holds
    the report's objective over the two.
    """
    check_request(benchmarks, datasets)
    device = device or default_device()
    loaded = load_for_eval(path, device)
    recipe = loaded.recipe
    root, why = chosen_data_root(root, recipe.data.root)
    rows = plan(benchmarks, datasets, root)  # every dataset is located first: a missing one fails before encoding
    info(f"data root: {root} ({why})")  # (an error above names it already)
    transform, clean_text = image_transform(loaded.preprocess), text_cleaner(loaded.preprocess)
    stems = file_names(rows)
    results: dict[str, dict[str, Any]] = {}
    for row in rows:
        metrics = evaluate_split(
            loaded.model,
            loaded.tokenizer,
            row.retrieval
            and open_eval_set(
                row.retrieval.path, "retrieval", transform, what=row.retrieval.source, clean_text=clean_text
            ),
            row.zeroshot and open_eval_set(row.zeroshot.path, "classification", transform, what=row.zeroshot.source),
            batch_size=recipe.eval.batch_size,
            chunk_size=recipe.eval.chunk_size,
            num_workers=recipe.data.num_workers,
            device=device,
            prefix="",
            precision="auto" if device.type == "cuda" else "no",
            progress=progress,
            max_missing=recipe.eval.max_missing if max_missing is None else max_missing,
            clean_text=clean_text,
        )
        metrics.update(checkpoint=str(path), epoch=loaded.epoch, **_sources(row))
        atomic_write_json(results_folder(path) / f"{stems[row.name]}.json", metrics, indent=2)
        results[row.name] = metrics
    pair = combined_pair(rows)
    if pair is not None:
        retrieval, zeroshot = results[pair[0]], results[pair[1]]
        results["combined"] = {
            "tr@1": retrieval["tr@1"],
            "ir@1": retrieval["ir@1"],
            "acc@1": zeroshot["acc@1"],
            "objective": objective(retrieval["tr@1"], retrieval["ir@1"], zeroshot["acc@1"]),
        }
    return results


def _sources(row: EvalSet) -> dict[str, str | None]:
    """What a result records it was measured on (`compare` and the published baselines read these)."""
    return {
        "retrieval_source": row.retrieval.source if row.retrieval else None,
        "zeroshot_source": row.zeroshot.source if row.zeroshot else None,
    }
