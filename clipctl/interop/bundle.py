"""What every way out of clipctl starts from: the model, its tokenizer, its preprocessing and its temperature, read
from a run directory, a checkpoint or a folder `clipctl export` wrote.

An exported folder carries `clipctl.json` (the manifest): the recipe's [model] table and the few other settings the
model needs (its preprocessing record, tokenizer length, temperature), so it loads without the run or its recipe.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from clipctl.data.text import TextTokenizer
from clipctl.errors import UsageError
from clipctl.evaluate.checkpoint_eval import load_for_eval, model_with_weights
from clipctl.interop import openclip_format
from clipctl.model.clip import CLIPModel
from clipctl.model.config import ModelConfig
from clipctl.model.preprocess import NORMALIZATIONS, Preprocess, image_transform, text_cleaner
from clipctl.model.util import first_line
from clipctl.run.layout import RunDir
from clipctl.schema import format_validation_error, known_keys

MANIFEST = "clipctl.json"
EXPORT_FORMAT = "clipctl-export"
EXPORT_VERSION = 1
SAFETENSORS_WEIGHTS = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
LAYOUTS = {"open_clip": openclip_format.WEIGHTS, "safetensors": SAFETENSORS_WEIGHTS}
DEFAULT_TEMPERATURE = 0.07  # open_clip's initial τ: the last resort for a model whose recipe names none

# What an export's manifest must hold, with the type of each value.
MANIFEST_FIELDS: dict[str, type] = {
    "layout": str,
    "model": dict,
    "image_size": int,
    "max_text_len": int,
    "pad_id": int,
    "temperature": float,
    "temperature_source": str,
    "batch_size": int,
    "num_workers": int,
    "epoch": int,
    "loss": str,
}


@dataclass
class Bundle:
    """A clipctl model ready for inference: CLIPModel (eval mode, on its device), tokenizer and preprocessing."""

    model: CLIPModel
    tokenizer: TextTokenizer
    model_config: ModelConfig
    preprocess: Preprocess
    temperature: float
    temperature_source: str
    batch_size: int  # eval.batch_size of the run: what `clipctl eval` encodes with
    num_workers: int  # data.num_workers of the run
    epoch: int
    loss: str
    source: Path  # the file the weights came from

    @property
    def image_size(self) -> int:
        return self.preprocess.image_size

    def transform(self) -> Callable:
        """The evaluation transform `clipctl eval` applies (PIL RGB image in, normalised tensor out)."""
        return image_transform(self.preprocess)

    def clean_text(self) -> Callable[[str], str]:
        """The text cleaning `clipctl eval` applies to captions and zero-shot prompts before tokenizing."""
        return text_cleaner(self.preprocess)

    def fingerprint(self) -> str:
        """Which weights these are, cheaply: the weights file's resolved path, size and modification time."""
        stat = self.source.stat()
        return hashlib.sha256(f"{self.source.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()

    def manifest(self, layout: str) -> dict[str, Any]:
        """The `clipctl.json` of an export of this model in `layout`."""
        from clipctl import __version__

        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "layout": layout,
            "weights": LAYOUTS[layout],
            "model": self.model_config.model_dump(exclude_none=True),
            "image_size": self.image_size,
            "preprocess": self.preprocess.to_record(),
            "max_text_len": self.tokenizer.max_len,
            "pad_id": self.tokenizer.pad_id,
            "temperature": self.temperature,
            "temperature_source": self.temperature_source,
            "logit_scale": float(torch.tensor(1.0 / self.temperature).log()),
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "epoch": self.epoch,
            "loss": self.loss,
            "exported_from": str(self.source.resolve()),
            "clipctl_version": __version__,
        }


def open_bundle(path: str | Path, device: torch.device | str = "cpu") -> Bundle:
    """The model at `path`: a run directory (its ckpt.pt), a checkpoint file or an exported folder."""
    path, device = Path(path), torch.device(device)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return _from_export(path, device)
        checkpoint = RunDir(path).checkpoint
        if checkpoint.is_file():
            return _from_checkpoint(checkpoint, device)
        what = "a run directory without ckpt.pt (no evaluation has saved a best model yet)"
        if not RunDir(path).is_run():
            what = f"neither a run directory nor a clipctl export (no ckpt.pt, no {MANIFEST})"
        raise UsageError(f"{path}: {what}; pass runs/<run>, its ckpt.pt or a folder written by `clipctl export`")
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder; pass runs/<run>, its ckpt.pt or an exported folder")
    return _from_checkpoint(path, device)


def _from_checkpoint(path: Path, device: torch.device) -> Bundle:
    loaded = load_for_eval(path, device)
    recipe = loaded.recipe
    temperature, how = loaded.temperature or recipe_temperature(recipe.loss)
    return Bundle(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        model_config=recipe.model,
        preprocess=loaded.preprocess,
        temperature=temperature,
        temperature_source=how,
        batch_size=recipe.eval.batch_size,
        num_workers=recipe.data.num_workers,
        epoch=loaded.epoch,
        loss=recipe.loss.name,
        source=path,
    )


def recipe_temperature(loss_cfg: Any) -> tuple[float, str]:
    """The fallback for a checkpoint written before the temperature record: the recipe's starting τ (exact for a
    fixed τ; for a learned or per-sample τ, where training started), else open_clip's initial 0.07."""
    for key in ("temperature", "tau_init"):
        value = getattr(loss_cfg, key, None)
        if isinstance(value, (int, float)) and value > 0:
            return float(value), f"recipe loss.{key} (the checkpoint predates the temperature record)"
    return DEFAULT_TEMPERATURE, "0.07, open_clip's initial τ (neither the checkpoint nor its recipe names one)"


def read_manifest(folder: Path) -> dict[str, Any]:
    """An export's manifest, checked field by field; anything else is a one-line UsageError."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UsageError(f"{path}: unreadable ({first_line(err)}); export the model again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise UsageError(f"{path}: not a clipctl export manifest (no format tag {EXPORT_FORMAT!r})")
    if manifest.get("version") != EXPORT_VERSION:
        raise UsageError(f"{path}: export format version {manifest.get('version')} is not supported")
    for key, kind in MANIFEST_FIELDS.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise UsageError(f"{path}: field {key!r} is missing or not a {kind.__name__}; export the model again")
    if manifest["layout"] not in LAYOUTS:
        raise UsageError(f"{path}: layout {manifest['layout']!r} is not one of {', '.join(LAYOUTS)}")
    return manifest


def _from_export(folder: Path, device: torch.device) -> Bundle:
    manifest = read_manifest(folder)
    try:
        model_cfg = ModelConfig.model_validate(manifest["model"])
    except ValidationError as err:
        message = format_validation_error(f"{folder / MANIFEST}: model", err, known_keys(ModelConfig))
        raise UsageError(message.replace(": model: ", ": model.", 1)) from None
    tokenizer = _export_tokenizer(folder, manifest)
    weights = folder / LAYOUTS[manifest["layout"]]
    state = read_safetensors(weights)
    if manifest["layout"] == "open_clip":
        state = openclip_format.from_open_clip_state(state, str(weights))
    return Bundle(
        model=model_with_weights(model_cfg, tokenizer, state, weights, device),
        tokenizer=tokenizer,
        model_config=model_cfg,
        preprocess=_export_preprocess(folder, manifest),
        temperature=manifest["temperature"],
        temperature_source=manifest["temperature_source"],
        batch_size=manifest["batch_size"],
        num_workers=manifest["num_workers"],
        epoch=manifest["epoch"],
        loss=manifest["loss"],
        source=weights,
    )


def _export_preprocess(folder: Path, manifest: dict[str, Any]) -> Preprocess:
    """The export's preprocessing record; an export written before the record has its image size and named
    normalisation (and the caption cleaning of its time)."""
    if "preprocess" in manifest:
        return Preprocess.from_record(manifest["preprocess"], str(folder / MANIFEST))
    normalize = manifest.get("normalize")
    if normalize not in NORMALIZATIONS:
        raise UsageError(f"{folder / MANIFEST}: field 'preprocess' is missing; export the model again")
    mean, std = NORMALIZATIONS[normalize]
    return Preprocess(image_size=manifest["image_size"], mean=mean, std=std)  # type: ignore[arg-type]


def _export_tokenizer(folder: Path, manifest: dict[str, Any]) -> TextTokenizer:
    path = folder / TOKENIZER_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: unreadable ({first_line(err)}); export the model again") from None
    tokenizer = TextTokenizer.from_json(text, manifest["max_text_len"])
    if tokenizer.pad_id != manifest["pad_id"]:
        raise UsageError(
            f"{path}: pads with id {tokenizer.pad_id} but the model was trained with pad id {manifest['pad_id']}; "
            "export the model again"
        )
    return tokenizer


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (no code runs on load); missing or corrupt files are one-line UsageErrors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (OSError, SafetensorError, ValueError) as err:
        raise UsageError(
            f"{path}: not a readable safetensors file ({first_line(err)}); export the model again"
        ) from None
