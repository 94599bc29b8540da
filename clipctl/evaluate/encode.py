"""Batched, no-grad, autocast encoding of images and captions, with throughput and an optional progress display."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch

from clipctl.console import ProgressReporter
from clipctl.data.text import trim_padding
from clipctl.errors import DataError, UsageError

Precision = Literal["no", "auto", "bf16", "fp16"]
PRECISIONS = ("no", "auto", "bf16", "fp16")


@dataclass(frozen=True)
class Encoded:
    """Features (n, d) float32 on the encoding device; labels (n,) when the loader yields (image, label) pairs;
    failed (n,) bool when it yields (image, label, failed) triples (images that did not decode)."""

    features: torch.Tensor
    labels: torch.Tensor | None
    seconds: float
    failed: torch.Tensor | None = None

    @property
    def items_per_s(self) -> float:
        return self.features.shape[0] / self.seconds if self.seconds > 0 else float("inf")


def model_device(model: Any) -> torch.device:
    """The device holding the model's first parameter (or buffer); CPU for a model without either."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for inference on `device`, or None for plain float32.

    bf16 where requested on CPU or CUDA; fp16 on CUDA only (CPU fp16 kernels are slow or missing); "auto" is bf16 on
    a CUDA device that supports it and float32 elsewhere. Other devices (MPS) encode in float32.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if precision == "bf16" and device.type in ("cpu", "cuda"):
        return torch.bfloat16
    if precision == "fp16" and device.type == "cuda":
        return torch.float16
    return None


@contextmanager
def _inference(model: Any, device: torch.device, precision: str) -> Iterator[None]:
    """Eval mode (restored afterwards: the trainer evaluates mid-training), no autograd, autocast if requested."""
    was_training = model.training
    dtype = autocast_dtype(device, precision)
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
            yield
    finally:
        model.train(was_training)


def _progress(description: str | None, total: int | None, unit: str) -> ProgressReporter | None:
    return ProgressReporter(description, total, unit) if description else None


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that timings measure the encoding, not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def iter_text_features(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int,
    device: torch.device,
    precision: Precision = "no",
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start index, float32 features) per batch of `texts`, encoded by model.encode_text(tokenizer.encode(...)).

    The inference context is entered per batch, so nothing of it (no_grad, autocast, eval mode) leaks into the
    caller's code between batches.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size={batch_size!r}: expected a positive integer (eval.batch_size)")
    for start in range(0, len(texts), batch_size):
        ids = trim_padding(tokenizer.encode(list(texts[start : start + batch_size])), tokenizer.pad_id)
        ids = ids.to(device, non_blocking=True)
        with _inference(model, device, precision):
            features = model.encode_text(ids)
        yield start, features.float()


def encode_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    precision: Precision = "no",
    progress: str | None = None,
) -> Encoded:
    """Encode captions in batches; `progress` is a description for a progress display (None: silent)."""
    if not texts:
        raise DataError("no captions to encode: the evaluation dataset is empty")
    device = model_device(model) if device is None else torch.device(device)
    reporter = _progress(progress, len(texts), "txt")
    started = time.perf_counter()
    parts = []
    try:
        for _, features in iter_text_features(
            model, tokenizer, texts, batch_size=batch_size, device=device, precision=precision
        ):
            parts.append(features)
            if reporter:
                reporter.update(features.shape[0])
        _synchronize(device)
    finally:
        if reporter:
            reporter.close()
    return Encoded(torch.cat(parts), None, time.perf_counter() - started)


def iter_image_features(
    model: Any, loader: Iterable[Any], *, device: torch.device, precision: Precision = "no"
) -> Iterator[tuple[Any, torch.Tensor]]:
    """Yield (batch as the loader gave it, float32 features) per batch, encoded by model.encode_image.

    A batch is an image tensor or a sequence whose first item is one. As in `iter_text_features`, the inference
    context is entered per batch, so a caller may write each batch's features out between batches.
    """
    for batch in loader:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        images = images.to(device, non_blocking=True)
        with _inference(model, device, precision):
            features = model.encode_image(images)
        yield batch, features.float()


def encode_images(
    model: Any,
    loader: Iterable[Any],
    *,
    device: torch.device | str | None = None,
    precision: Precision = "no",
    progress: str | None = None,
) -> Encoded:
    """Encode every batch of a DataLoader with model.encode_image.

    Batches are image tensors (a RetrievalDataset) or (images, labels[, failed]) sequences (a
    ClassificationDataset, or any set wrapped by `evaluate.hooks`); labels and failures are returned when
    present. The time includes data loading: it is the throughput a user waits for.
    """
    device = model_device(model) if device is None else torch.device(device)
    dataset = getattr(loader, "dataset", None)
    reporter = _progress(progress, len(dataset) if dataset is not None else None, "img")
    started = time.perf_counter()
    parts, labels, failed = [], [], []
    try:
        for batch, features in iter_image_features(model, loader, device=device, precision=precision):
            if isinstance(batch, (list, tuple)) and len(batch) > 1:
                labels.append(torch.as_tensor(batch[1]))
            if isinstance(batch, (list, tuple)) and len(batch) > 2:
                failed.append(torch.as_tensor(batch[2]).bool())
            parts.append(features)
            if reporter:
                reporter.update(features.shape[0])
        _synchronize(device)
    finally:
        if reporter:
            reporter.close()
    if not parts:
        raise DataError("the image loader yielded no batches: the evaluation dataset is empty")
    return Encoded(
        torch.cat(parts),
        torch.cat(labels).long() if labels else None,
        time.perf_counter() - started,
        torch.cat(failed) if failed else None,
    )
