"""Image-text retrieval recall@k in both directions (CLIP_benchmark conventions), memory-bounded and exact."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clipctl.errors import DataError, UsageError
from clipctl.evaluate import exact


def check_ks(ks: Sequence[int], name: str = "ks") -> tuple[int, ...]:
    """Validate the k values of a recall/accuracy@k request (positive ints, no duplicates)."""
    values = tuple(ks)
    if not values or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in values):
        raise UsageError(f"{name}={values!r}: expected one or more positive integers, e.g. (1, 5, 10)")
    if len(set(values)) != len(values):
        raise UsageError(f"{name}={values!r}: each k may appear once")
    return values


def check_chunk_size(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise UsageError(f"chunk_size={chunk_size!r}: expected a positive integer (eval.chunk_size)")
    return chunk_size


def _check_text_to_image(text_to_image: torch.Tensor | Sequence[int], n_images: int, n_captions: int) -> torch.Tensor:
    t2i = torch.as_tensor(text_to_image)
    if t2i.dim() != 1 or t2i.numel() != n_captions or t2i.is_floating_point() or t2i.dtype == torch.bool:
        raise DataError(
            f"text_to_image: expected {n_captions} integer image indices (one per caption), "
            f"got shape {tuple(t2i.shape)} of {t2i.dtype}"
        )
    t2i = t2i.long()
    outside = ((t2i < 0) | (t2i >= n_images)).nonzero()
    if outside.numel():
        j = int(outside[0])
        raise DataError(f"text_to_image[{j}] = {int(t2i[j])}: not an image index in 0..{n_images - 1}")
    orphans = (torch.bincount(t2i.cpu(), minlength=n_images) == 0).nonzero()
    if orphans.numel():
        raise DataError(
            f"image {int(orphans[0])} has no caption ({orphans.numel()} such images); "
            "every image needs at least one caption for image-to-text retrieval"
        )
    return t2i


# Over 60 lines: the docstring carries the metric definitions of specs/eval.md.
def retrieval_metrics(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@k for image->text (TR) and text->image (IR) retrieval, as fractions, plus their mean `r_mean`.

    image_features (I, d) and text_features (C, d) are L2-normalised; text_to_image (C,) gives each caption's image.
    Similarity is the dot product (cosine).

    - TR@k: for each image, rank all C captions; a hit if ANY of the image's own captions is in the top k. Mean over I.
    - IR@k: for each caption, rank all I images; a hit if its own image is in the top k. Mean over C.
    - Tie rule: the rank of a query's correct item is the number of items scoring STRICTLY higher than it (for TR,
      than the best-scoring of the image's captions); a hit if rank < k. Items tied with the correct one do not push
      it down, so ties count in the model's favour. Scores are those of the features rounded to a 2**-24 grid and are
      evaluated exactly (see `clipctl.evaluate.exact`), so a tie is an exact tie and the result does not depend on
      chunk_size, device or BLAS.

    Memory: the images are processed `chunk_size` at a time against all captions; each chunk yields complete TR ranks
    for its images and adds to the IR counts of every caption, so the extra memory is O(chunk_size x C) floats plus
    the features, never the full I x C matrix.
    """
    ks = check_ks(ks)
    chunk_size = check_chunk_size(chunk_size)
    device, images, texts = exact.image_grids(
        image_features, text_features, "text_features", "text_features", "encode both with the same model"
    )
    n_images, n_captions = images.shape[0], texts.shape[0]
    t2i = _check_text_to_image(text_to_image, n_images, n_captions).to(device)

    # Exact score of each caption with its own image, and each image's best own caption.
    positive = exact.pair_dots(images, texts, t2i, torch.arange(n_captions, device=device))
    best = torch.full((n_images,), float("-inf"), dtype=torch.float64, device=device)
    best.scatter_reduce_(0, t2i, positive, reduce="amax")

    margin = exact.float32_error_bound(images.shape[1])
    cap = max(ks)  # ranks >= the largest k are all misses: they need not be exact
    tr_rank = torch.empty(n_images, dtype=torch.long, device=device)
    ir_rank = torch.zeros(n_captions, dtype=torch.long, device=device)
    buffer = torch.empty(min(chunk_size, n_images), n_captions, dtype=torch.float32, device=device)
    with exact.ieee_float32_matmul():
        for start in range(0, n_images, chunk_size):
            block = images[start : start + chunk_size]
            scores = torch.mm(block, texts.T, out=buffer[: block.shape[0]])  # one allocation for all chunks
            # An image's own captions never count against it: for TR none beats the best own caption, for IR the
            # own image is the reference. Masking them keeps the unsure band free of the (always tied) positives.
            own = ((t2i >= start) & (t2i < start + block.shape[0])).nonzero().squeeze(1)
            scores[t2i[own] - start, own] = float("-inf")
            tr_rank[start : start + chunk_size] = exact.count_higher(
                scores, block, texts, best[start : start + chunk_size, None], 1, margin, cap
            )
            ir_rank += exact.count_higher(scores, block, texts, positive[None, :], 0, margin, cap, base=ir_rank)

    out: dict[str, float] = {}
    for k in ks:
        out[f"tr@{k}"] = int((tr_rank < k).sum()) / n_images
    for k in ks:
        out[f"ir@{k}"] = int((ir_rank < k).sum()) / n_captions
    out["r_mean"] = sum(out.values()) / len(out)
    return out
