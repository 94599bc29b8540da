"""The run directory's torch files, atomic and weights-only-safe: the self-contained `ckpt.pt` that
`clipctl eval` and `model.init_from` load, and the resumable training state under `state/`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import IO, Any

import torch

from clipctl.atomic import atomic_write
from clipctl.errors import ResumeError, UsageError

CKPT_FORMAT = "clipctl-ckpt"
STATE_FORMAT = "clipctl-state"
FORMAT_VERSION = 1


# What `clipctl eval` and resume read from each file, with the type each must have.
CKPT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": dict,
    "recipe_toml": str,
    "tokenizer_json": str,
    "tokenizer_max_len": int,
    "metrics": dict,
    "epoch": int,
}
# Written since the temperature record; a checkpoint without them predates it (readers fall back, see
# `recorded_temperature`).
CKPT_OPTIONAL_FIELDS: dict[str, type | tuple[type, ...]] = {"temperature": float, "temperature_source": str}
STATE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "recipe_sha256": str,
    "recipe": dict,
    "num_samples": int,
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "scaler": dict,
    "loss": dict,
    "rng": (list, dict),
    "progress": dict,
    "tokenizer_json": str,
    "subset_indices": (list, type(None)),
}


class _WriteRecorder:
    """A file handle that remembers the OSError of a failed write: torch.save reports a full disk only as
    "unexpected pos", so the caller re-raises the real cause (ENOSPC, EROFS, ...)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle, self.error = handle, None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


def atomic_torch_save(obj: Any, path: Path) -> None:
    def write(handle: IO[bytes]) -> None:
        recorder = _WriteRecorder(handle)
        try:
            torch.save(obj, recorder)
        except RuntimeError:
            if recorder.error is None:
                raise
            raise recorder.error from None

    atomic_write(path, write)


def check_fields(obj: dict[str, Any], fields: dict[str, type | tuple[type, ...]], path: Path, what: str) -> None:
    """A file of the right format but with a field missing or of the wrong type is refused in one line."""
    for key, kind in fields.items():
        if key not in obj:
            raise UsageError(f"{path}: {what} has no {key!r} field (truncated or written by another tool)")
        if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
            names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise UsageError(f"{path}: {what} field {key!r} is a {type(obj[key]).__name__}, expected {names}")


def safe_torch_load(path: Path, what: str) -> dict[str, Any]:
    """`torch.load(weights_only=True)`: plain containers and tensors only; anything else is refused."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such {what}") from None
    except Exception as err:  # torch raises many types for corrupt or malicious files; all mean "unloadable"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{path}: not a loadable {what} (corrupt, foreign or carrying code: {first[:160]})") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{path}: not a clipctl {what} (found {type(obj).__name__})")
    return obj


def checkpoint_fields(
    *,
    model_state: dict[str, torch.Tensor],
    recipe_toml: str,
    tokenizer_json: str,
    tokenizer_max_len: int,
    metrics: dict[str, Any],
    epoch: int,
    temperature: tuple[float, str] | None = None,
    preprocess: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What `clipctl eval` needs: weights, recipe, tokenizer, metrics; the temperature τ to use at inference with
    how it was chosen (`logit_scale = ln(1/τ)` of an export), when the loss has one; and the model's preprocessing
    record (`clipctl.model.preprocess`), which every later user builds its transforms from."""
    recorded: dict[str, Any] = (
        {"temperature": float(temperature[0]), "temperature_source": temperature[1]} if temperature else {}
    )
    if preprocess is not None:
        recorded["preprocess"] = preprocess
    return {
        "model": {k: v.detach().cpu() for k, v in model_state.items()},
        "recipe_toml": recipe_toml,
        "tokenizer_json": tokenizer_json,
        "tokenizer_max_len": tokenizer_max_len,
        "metrics": metrics,
        "epoch": epoch,
        **recorded,
    }


def save_checkpoint(path: Path, **fields: Any) -> None:
    """The self-contained model file `clipctl eval` loads; `fields` are `checkpoint_fields`'s arguments."""
    atomic_torch_save({"format": CKPT_FORMAT, "version": FORMAT_VERSION, **checkpoint_fields(**fields)}, path)


def save_epoch_checkpoint(path: Path, state: dict[str, Any], **fields: Any) -> None:
    """A training state that `clipctl eval` reads as well (open_clip's `epoch_N.pt`): the state's fields and the
    checkpoint's (`fields` are `checkpoint_fields`' arguments) in one file, the weights stored once."""
    checkpoint = checkpoint_fields(**fields)
    atomic_torch_save({"format": STATE_FORMAT, "version": FORMAT_VERSION, **state, **checkpoint}, path)


def is_epoch_checkpoint(obj: dict[str, Any]) -> bool:
    return obj.get("format") == STATE_FORMAT and all(key in obj for key in CKPT_FIELDS)


def load_checkpoint(path: Path) -> dict[str, Any]:
    ckpt = safe_torch_load(path, "clipctl checkpoint")
    if ckpt.get("format") != CKPT_FORMAT and not is_epoch_checkpoint(ckpt):
        raise UsageError(f"{path}: not a clipctl checkpoint (no format tag {CKPT_FORMAT!r}); pass runs/<run>/ckpt.pt")
    if ckpt.get("version") != FORMAT_VERSION:
        raise UsageError(
            f"{path}: checkpoint format version {ckpt.get('version')} is not supported (expected {FORMAT_VERSION})"
        )
    check_fields(ckpt, CKPT_FIELDS, path, "checkpoint")
    check_fields(ckpt, {k: v for k, v in CKPT_OPTIONAL_FIELDS.items() if k in ckpt}, path, "checkpoint")
    return ckpt


def recorded_temperature(ckpt: dict[str, Any]) -> tuple[float, str] | None:
    """(τ, how it was chosen) as the trainer recorded it, or None for a checkpoint written before the record
    (or by a loss without a temperature); a non-positive or non-finite τ counts as none."""
    tau = ckpt.get("temperature")
    if not isinstance(tau, float) or not math.isfinite(tau) or tau <= 0:
        return None
    return tau, str(ckpt.get("temperature_source", ""))


def save_state(path: Path, fields: dict[str, Any]) -> None:
    """The resumable training state (STATE_FIELDS and whatever else the trainer keeps), format-tagged."""
    atomic_torch_save({"format": STATE_FORMAT, "version": FORMAT_VERSION, **fields}, path)


def load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ResumeError(f"{path}: no resumable state there; start without --resume or point --resume at runs/<run>")
    try:
        state = safe_torch_load(path, "training state")
    except UsageError as err:
        raise ResumeError(str(err)) from None
    if state.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path}: not a clipctl training state")
    try:
        check_fields(state, STATE_FIELDS, path, "training state")
    except UsageError as err:
        raise ResumeError(str(err)) from None
    return state
