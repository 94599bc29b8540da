"""Zero-shot classification: template-averaged class embeddings (the OpenAI CLIP protocol) and top-k accuracy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from clipctl.console import ProgressReporter
from clipctl.errors import DataError
from clipctl.evaluate import exact
from clipctl.evaluate.encode import Precision, iter_text_features, model_device
from clipctl.evaluate.retrieval import check_chunk_size, check_ks


def fill_templates(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """All prompts, class-major: templates[0..T) for classnames[0], then for classnames[1], ...

    `{}` in a template is replaced by the class name (str.replace, so other braces in names or templates are text).
    """
    if not classnames:
        raise DataError("zero-shot classification needs at least one class name")
    if not templates:
        raise DataError("zero-shot classification needs at least one template, e.g. 'a photo of a {}.'")
    for template in templates:
        if "{}" not in template:
            raise DataError(f"template {template!r} has no '{{}}' placeholder for the class name")
    return [template.replace("{}", name) for name in classnames for template in templates]


def zeroshot_classifier(
    model: Any,
    tokenizer: Any,
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    precision: Precision = "no",
    progress: str | None = None,
    clean: Callable[[str], str] | None = None,
) -> torch.Tensor:
    """Classifier weights (num_classes, d), float32, L2-normalised rows, on the model's device.

    For each class, every template is filled with the class name and encoded with
    `model.encode_text(tokenizer.encode(texts))`; each prompt embedding is L2-normalised, the class's embeddings are
    averaged and the mean is re-normalised. Prompts are encoded in batches of `batch_size` that may span classes;
    the per-class sums are accumulated, so memory is O(num_classes x d), not O(num_classes x templates x d).
    `progress` is a description for a progress display over the prompts (None: silent). `clean` is applied to each
    filled prompt: the model's caption cleaning, so that prompts read like the captions it was trained on (a
    template's trailing "." would otherwise be a token the model never saw); None: as written.
    """
    prompts = fill_templates(classnames, templates)
    if clean is not None:
        prompts = [clean(prompt) for prompt in prompts]
    device = model_device(model) if device is None else torch.device(device)
    per_class = len(templates)
    sums: torch.Tensor | None = None
    reporter = ProgressReporter(progress, len(prompts), "prompt") if progress else None
    try:
        for start, features in iter_text_features(
            model, tokenizer, prompts, batch_size=batch_size, device=device, precision=precision
        ):
            features = torch.nn.functional.normalize(features, dim=-1)
            if sums is None:
                sums = torch.zeros(len(classnames), features.shape[1], dtype=torch.float32, device=features.device)
            owner = torch.arange(start, start + features.shape[0], device=features.device) // per_class
            sums.index_add_(0, owner, features)
            if reporter:
                reporter.update(features.shape[0])
    finally:
        if reporter:
            reporter.close()
    return torch.nn.functional.normalize(cast(torch.Tensor, sums) / per_class, dim=-1)  # >= 1 prompt: sums is set


def zeroshot_accuracy(
    image_features: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    W: torch.Tensor,
    ks: Sequence[int] = (1, 5),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Top-k accuracy (fractions) of predicting argmax over classes of image . W[c]: {"acc@1", "acc@5"} by default.

    image_features (N, d) and W (num_classes, d) are L2-normalised; labels (N,) are class indices. A prediction is
    correct at k if the true class is among the k highest-scoring classes, ties broken towards the LOWER class index
    (what argmax and the OpenAI/open_clip evaluations do; it matters for ImageNet's two pairs of identically named
    classes, "missile" and "sunglasses", whose weights coincide). Scores are exact (see `clipctl.evaluate.exact`) and
    computed `chunk_size` images at a time, so the result does not depend on chunk_size or device. With fewer than k
    classes every prediction is correct at k.
    """
    ks = check_ks(ks)
    chunk_size = check_chunk_size(chunk_size)
    device, images, weights = exact.image_grids(
        image_features, W, "classifier weights W", "the classifier", "build the classifier with the same model"
    )
    n_images, n_classes = images.shape[0], weights.shape[0]
    y = torch.as_tensor(labels)
    if y.dim() != 1 or y.numel() != n_images or y.is_floating_point() or y.dtype == torch.bool:
        raise DataError(f"labels: expected {n_images} integer class indices, got shape {tuple(y.shape)} of {y.dtype}")
    y = y.long().to(device)
    outside = ((y < 0) | (y >= n_classes)).nonzero()
    if outside.numel():
        i = int(outside[0])
        raise DataError(f"labels[{i}] = {int(y[i])} is not a class index in 0..{n_classes - 1}")
    class_index = torch.arange(n_classes, device=device)
    rank = torch.empty(n_images, dtype=torch.long, device=device)
    for start in range(0, n_images, chunk_size):
        scores = exact.exact_scores(images[start : start + chunk_size], weights)
        truth = y[start : start + chunk_size, None]
        own = scores.gather(1, truth)
        ahead = (scores > own) | ((scores == own) & (class_index[None, :] < truth))
        rank[start : start + chunk_size] = ahead.sum(dim=1)
    return {f"acc@{k}": int((rank < k).sum()) / n_images for k in ks}
