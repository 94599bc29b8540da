"""What the trainer calls each epoch (on the validation split) and `clipctl eval` on the test splits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from clipctl.data.loader import loader_worker_init
from clipctl.errors import DataError
from clipctl.evaluate.encode import Precision, encode_images, encode_texts, model_device
from clipctl.evaluate.objective import objective
from clipctl.evaluate.retrieval import retrieval_metrics
from clipctl.evaluate.zeroshot import zeroshot_accuracy, zeroshot_classifier


class _WithFailures(Dataset):
    """Items as (image, label or -1, failed): whether the image failed to decode (and was replaced by a blank
    one), seen where it was read, so failures inside loader workers still reach the count."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int, bool]:
        before = getattr(self.dataset, "decode_failures", 0)
        item = self.dataset[index]
        failed = getattr(self.dataset, "decode_failures", 0) > before
        image, label = item[:2] if isinstance(item, (tuple, list)) else (item, -1)
        return image, label, failed


def _loader(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device) -> DataLoader:
    return DataLoader(
        _WithFailures(dataset),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        worker_init_fn=loader_worker_init() if num_workers > 0 else None,
        pin_memory=device.type == "cuda",
    )


def _where(dataset: Any) -> str:
    return str(getattr(dataset, "source", None) or getattr(dataset, "root", "the evaluation set"))


def check_missing(dataset: Any, max_missing: int | None, failed: int = 0) -> tuple[int, int]:
    """(scored, listed) images of an evaluation set; DataError (exit 3) when more than `max_missing` are
    unreadable or missing (None: no limit). Why: a number computed on 1 of 3 images must not pass as the
    benchmark's."""
    listed = int(getattr(dataset, "listed", len(dataset)))
    scored = len(dataset) - failed
    missing = listed - scored
    if max_missing is not None and missing > max_missing:
        unreadable = getattr(dataset, "unreadable", [])
        first = f" (first: {unreadable[0][0]}: {unreadable[0][1]})" if unreadable else ""
        raise DataError(
            f"{_where(dataset)}: {missing} of {listed} images are missing or unreadable{first}; "
            f"eval.max_missing = {max_missing}; fetch the dataset again (`clipctl data verify` names it) "
            f"or raise eval.max_missing to score the {scored} that remain"
        )
    return scored, listed


def evaluate_split(
    model: Any,
    tokenizer: Any,
    retrieval_dataset: Any | None,
    classification_dataset: Any | None,
    *,
    batch_size: int,
    chunk_size: int,
    num_workers: int,
    device: torch.device | str | None,
    prefix: str = "val/",
    precision: Precision = "no",
    progress: bool = False,
    max_missing: int | None = 0,
    clean_text: Callable[[str], str] | None = None,
) -> dict[str, float]:
    """Retrieval and zero-shot metrics of one split, as fractions, keys prefixed with `prefix`.

    retrieval_dataset: `.captions` (list[str]), `.text_to_image` (C,), items are image tensors.
    classification_dataset: `.classnames`, `.templates` (with `{}`), items are (image tensor, label); its prompts go
    through `clean_text`, the model's caption cleaning (`clipctl.model.preprocess.text_cleaner`; None: as written).
    Returns {prefix+"tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "r_mean"} for retrieval, {"acc@1", "acc@5"}
    for zero-shot, "objective" when both are given, and the encoding throughput "images_per_s" (all images) and
    "captions_per_s", and how many images were scored out of how many the set lists ("retrieval_scored",
    "retrieval_total", "zeroshot_scored", "zeroshot_total"); more than `max_missing` missing or unreadable
    images is a DataError (exit 3). Either dataset may be None (`clipctl eval --coco` alone has no zero-shot
    set). The model is used as is (the caller places it; with several processes, call this on one of them
    with the unwrapped model) and is left in the train/eval mode it had.
    """
    device = model_device(model) if device is None else torch.device(device)
    for dataset in (retrieval_dataset, classification_dataset):
        if dataset is not None:
            check_missing(dataset, max_missing)  # before any encoding: files absent or unreadable at construction
    options = _EncodeOptions(batch_size, chunk_size, num_workers, device, precision, prefix if progress else None)
    metrics: dict[str, float] = {}
    image_count, image_seconds = 0, 0.0
    if retrieval_dataset is not None:
        part, count, seconds = _retrieval(model, tokenizer, retrieval_dataset, options, max_missing)
        metrics.update(part)
        image_count, image_seconds = image_count + count, image_seconds + seconds
    if classification_dataset is not None:
        part, count, seconds = _zeroshot(model, tokenizer, classification_dataset, options, max_missing, clean_text)
        metrics.update(part)
        image_count, image_seconds = image_count + count, image_seconds + seconds
    if retrieval_dataset is not None and classification_dataset is not None:
        metrics["objective"] = objective(metrics["tr@1"], metrics["ir@1"], metrics["acc@1"])
    if image_count:
        metrics["images_per_s"] = image_count / image_seconds if image_seconds > 0 else float("inf")
    return {prefix + key: value for key, value in metrics.items()}


def _failures(encoded: Any) -> int:
    return int(encoded.failed.sum()) if encoded.failed is not None else 0


@dataclass(frozen=True)
class _EncodeOptions:
    """How one split is encoded; `progress` is the label prefix of the progress bars (None: no bars)."""

    batch_size: int
    chunk_size: int
    num_workers: int
    device: torch.device
    precision: Precision
    progress: str | None

    def label(self, what: str) -> str | None:
        return None if self.progress is None else f"{self.progress}{what}"


def _retrieval(
    model: Any, tokenizer: Any, dataset: Any, o: _EncodeOptions, max_missing: int | None
) -> tuple[dict[str, float], int, float]:
    """Recall@k of a retrieval set, its caption throughput and scored/total images; with its image count and
    encoding seconds."""
    loader = _loader(dataset, o.batch_size, o.num_workers, o.device)
    images = encode_images(model, loader, device=o.device, precision=o.precision, progress=o.label("retrieval images"))
    texts = encode_texts(
        model,
        tokenizer,
        dataset.captions,
        batch_size=o.batch_size,
        device=o.device,
        precision=o.precision,
        progress=o.label("captions"),
    )
    metrics = retrieval_metrics(images.features, texts.features, dataset.text_to_image, chunk_size=o.chunk_size)
    metrics["captions_per_s"] = texts.items_per_s
    metrics["retrieval_scored"], metrics["retrieval_total"] = check_missing(dataset, max_missing, _failures(images))
    return metrics, images.features.shape[0], images.seconds


def _zeroshot(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    o: _EncodeOptions,
    max_missing: int | None,
    clean_text: Callable[[str], str] | None,
) -> tuple[dict[str, float], int, float]:
    """Zero-shot accuracy of a classification set and its scored/total images; with its image count and encoding
    seconds."""
    weights = zeroshot_classifier(
        model,
        tokenizer,
        dataset.classnames,
        dataset.templates,
        batch_size=o.batch_size,
        device=o.device,
        precision=o.precision,
        progress=o.label("class prompts"),
        clean=clean_text,
    )
    loader = _loader(dataset, o.batch_size, o.num_workers, o.device)
    images = encode_images(model, loader, device=o.device, precision=o.precision, progress=o.label("zero-shot images"))
    if images.labels is None or bool((images.labels < 0).any()):
        raise DataError("the classification dataset yields images without labels; items must be (image, label)")
    metrics = zeroshot_accuracy(images.features, images.labels, weights, chunk_size=o.chunk_size)
    metrics["zeroshot_scored"], metrics["zeroshot_total"] = check_missing(dataset, max_missing, _failures(images))
    return metrics, images.features.shape[0], images.seconds
