"""Exact similarity arithmetic, so that no metric depends on chunk size, thread count, BLAS kernel or device.

Features are rounded to a grid of 2**-24 (an absolute change of at most 2**-25 per component, below float32's
resolution for the larger components of a unit vector). A product of two grid values is a multiple of 2**-48 and, for
rows of norm <= 2, every partial sum of a dot product has magnitude <= 4, so it needs at most 50 significant bits:
float64 dot products of grid values are exact in any summation order. Equal scores are therefore exact ties and a rank
is a property of the data, not of how the matrix product was blocked.

Full float64 products are slow on CPUs and most GPUs, so retrieval multiplies in float32 and recomputes exactly only
the pairs whose float32 score lies within the worst-case float32 rounding error of a threshold (`count_higher`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from clipctl.errors import DataError

GRID_BITS = 24
_GRID = float(2**GRID_BITS)
NORM_TOLERANCE = 0.02  # bf16/fp16 encoders normalise in low precision; a larger deviation means "not normalised"
_PAIR_BATCH = 2048  # pairs per float64 batch: 2 x 2048 x d x 8 bytes (16 MB at d = 512)
_LANES = 8  # mask bytes per int64 word in count_true
_MAX_WORDS = 255  # words summed before a byte lane (max 255) could overflow
_DENSE_FRACTION = 16  # more unsure pairs than 1/16 of a block: recompute the block exactly instead


def compute_device(features: torch.Tensor) -> torch.device:
    """Where the exact arithmetic runs: the features' device, except MPS (it has no float64)."""
    return torch.device("cpu") if features.device.type == "mps" else features.device


def to_grid(features: torch.Tensor, name: str, device: torch.device) -> torch.Tensor:
    """Validate an (n, d) matrix of L2-normalised rows and return it rounded to the grid, as float32 on `device`.

    float32 holds every grid value of magnitude <= 2 exactly, and scaling by a power of two is exact, so the rounding
    happens in float32 without a float64 copy of the whole matrix.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or not features.is_floating_point():
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise DataError(f"{name}: expected a floating-point (n, d) tensor, got {shape}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise DataError(f"{name}: empty tensor of shape {tuple(features.shape)}; evaluate at least one item")
    x = features.detach().to(device=device, dtype=torch.float32)
    norms = x.norm(dim=1)  # not finite exactly when a row holds NaN or inf
    bad = (~torch.isfinite(norms)).nonzero()
    if bad.numel():
        raise DataError(f"{name} row {int(bad[0])} is not finite (NaN or inf); check the encoder and its precision")
    bad = ((norms - 1.0).abs() > NORM_TOLERANCE).nonzero()
    if bad.numel():
        row = int(bad[0])
        raise DataError(
            f"{name} row {row} has L2 norm {float(norms[row]):.4g}; pass L2-normalised features "
            "(x / x.norm(dim=-1, keepdim=True))"
        )
    grid = x * _GRID
    return grid.round_().div_(_GRID)


def image_grids(
    image_features: torch.Tensor, other: torch.Tensor, other_name: str, other_label: str, remedy: str
) -> tuple[torch.device, torch.Tensor, torch.Tensor]:
    """The compute device and both matrices on the grid there, after checking they share one embedding dimension."""
    device = compute_device(image_features)
    images = to_grid(image_features, "image_features", device)
    others = to_grid(other, other_name, device)
    if images.shape[1] != others.shape[1]:
        raise DataError(
            f"image_features have dimension {images.shape[1]} but {other_label} {others.shape[1]}; {remedy}"
        )
    return device, images, others


def pair_dots(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Exact float64 scores a[rows[p]] . b[cols[p]] for every pair p, in batches to bound memory."""
    out = torch.empty(rows.numel(), dtype=torch.float64, device=a.device)
    for start in range(0, rows.numel(), _PAIR_BATCH):
        stop = start + _PAIR_BATCH
        left = a[rows[start:stop]].double().unsqueeze(1)
        right = b[cols[start:stop]].double().unsqueeze(2)
        out[start:stop] = torch.bmm(left, right).flatten()
    return out


def exact_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact float64 score matrix a @ b.T of two grid matrices."""
    return a.double() @ b.double().T


def float32_error_bound(dim: int) -> float:
    """Margin around a threshold outside which a float32 score is on the correct side of it for certain.

    Any float32 dot product of length `dim` of grid rows with norm <= 1 + NORM_TOLERANCE is within
    gamma = dim*u/(1 - dim*u) (u = 2**-24) times the product of the norms of the exact value, whatever the summation
    order. The margin doubles that and adds 2**-18 for rounding the float64 thresholds to float32.
    """
    u = 2.0**-24
    gamma = dim * u / (1.0 - dim * u)
    return 2.0 * gamma * (1.0 + NORM_TOLERANCE) ** 2 + 2.0**-18


@contextmanager
def ieee_float32_matmul() -> Iterator[None]:
    """Full float32 precision for matrix products (no TF32 / bf16 shortcuts), restoring the caller's setting.

    The error bound in `float32_error_bound` holds only for IEEE float32 arithmetic; a trainer may have enabled TF32,
    through the legacy flags (`allow_tf32`, `set_float32_matmul_precision`, which Accelerate uses) or the per-backend
    `fp32_precision` API. torch refuses to run a matmul while the two disagree ("mix of the legacy and new APIs"), so
    the guard switches through the API the process already uses: the legacy one while its getters still answer.
    """
    legacy = _legacy_matmul_state()
    if legacy is not None:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:  # the flag first: setting it rewrites the precision ("medium" would come back as "high")
            torch.backends.cuda.matmul.allow_tf32 = legacy[1]
            torch.set_float32_matmul_precision(legacy[0])
        return
    backends = [torch.backends.cuda.matmul, torch.backends.mkldnn.matmul]
    saved = [b.fp32_precision for b in backends]
    for backend in backends:
        backend.fp32_precision = "ieee"
    try:
        yield
    finally:
        for backend, value in zip(backends, saved):
            backend.fp32_precision = value


def _legacy_matmul_state() -> tuple[str, bool] | None:
    """(float32 matmul precision, cuBLAS TF32 flag) through the legacy getters, or None once the per-backend API
    has made them refuse to answer."""
    try:
        return torch.get_float32_matmul_precision(), bool(torch.backends.cuda.matmul.allow_tf32)
    except RuntimeError:
        return None


def count_true(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Number of True entries along `dim` (0 or 1) of a 2-D boolean mask, as int64.

    Counts eight entries per integer addition: the mask's 0/1 bytes are read as int64 words, and at most 255 words
    are added before their byte lanes are unpacked, so no lane can overflow into its neighbour. On CPUs this is
    about ten times faster than `mask.sum(dim)`, which widens every entry to int64 first.
    """
    rows, cols = mask.shape
    data = mask.contiguous().view(torch.uint8)
    if cols % _LANES:
        data = torch.nn.functional.pad(data, (0, _LANES - cols % _LANES))
    words = data.view(torch.int64)
    if dim == 1:
        total = torch.zeros(rows, dtype=torch.long, device=mask.device)
        width, groups = words.shape[1], words.shape[1] // _MAX_WORDS
        if groups:  # whole groups of 255 words per row, as a view: no copy
            shape, strides = (rows, groups, _MAX_WORDS), (words.stride(0), _MAX_WORDS, 1)
            body = words.as_strided(shape, strides, words.storage_offset())
            total += body.sum(dim=2).view(torch.uint8).view(rows, -1).sum(dim=1)
        if width % _MAX_WORDS:
            total += words[:, groups * _MAX_WORDS :].sum(dim=1).view(torch.uint8).view(rows, _LANES).sum(dim=1)
        return total
    total = torch.zeros(words.shape[1] * _LANES, dtype=torch.long, device=mask.device)
    for start in range(0, rows, _MAX_WORDS):
        total += words[start : start + _MAX_WORDS].sum(dim=0).view(torch.uint8)
    return total[:cols]


# Over 60 lines: the docstring carries the exactness argument; the body is one blocked loop.
def count_higher(
    scores: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    thresholds: torch.Tensor,
    dim: int,
    margin: float,
    cap: int,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per line of the float32 block `scores` = a @ b.T, count the entries whose EXACT score beats its threshold.

    `thresholds` (exact float64, one per line) are per row with dim=1 (counts along rows) or per column with dim=0.
    Only ranks below `cap` (the largest k) matter, so a count is exact wherever `base + count < cap` and otherwise
    only guaranteed to reach `cap` (`base`: counts from earlier blocks; lines already at `cap` are skipped).
    Entries farther than `margin` from their threshold are decided by their float32 score; the unsure ones of lines
    still below `cap` are recomputed exactly, pair by pair, or as whole exact lines when most of them are unsure (a
    collapsed encoder: everything ties). Entries that must never count have to be -inf in `scores`.

    Cost: a max-reduction, one comparison pass for the sure counts of the lines whose maximum reaches their band, a
    second one (lower edge of the band) for those still below `cap`, and the band itself only on lines that have an
    entry in it; each pass runs on the whole block when many lines qualify, else on a copy of those lines.
    """
    thresholds = thresholds.flatten()
    hi = (thresholds + margin).to(torch.float32)
    lo = (thresholds - margin).to(torch.float32)
    counts = torch.zeros(scores.shape[1 - dim], dtype=torch.long, device=scores.device)
    live = scores.amax(dim=dim) >= lo
    if base is not None:
        live &= base < cap
    block, lines, _ = _narrow(scores, live, None, dim)
    if block is None:
        return counts
    sure = count_true(block > _along(_pick(hi, lines), dim), dim)
    if lines is None:
        counts = sure
    else:
        counts[lines] = sure
    below = (sure < cap if base is None else sure + _pick(base, lines) < cap) & _pick(live, lines)
    block, lines, kept = _narrow(block, below, lines, dim)
    if block is None:
        return counts
    line_lo = _pick(lo, lines)
    if kept is None:  # a kept whole block: lines that need no check get an empty band
        line_lo = torch.where(below, line_lo, float("inf"))
    unsure = count_true(block >= _along(line_lo, dim), dim) - _pick(sure, kept)
    block, lines, kept = _narrow(block, unsure > 0, lines, dim)
    if block is None:
        return counts
    line_lo = _pick(line_lo, kept)
    band = (block >= _along(line_lo, dim)) & (block <= _along(_pick(hi, lines), dim))
    if int(_pick(unsure, kept).sum()) > band.numel() // _DENSE_FRACTION:
        exact_a = a if dim == 0 or lines is None else a[lines]
        exact_b = b if dim == 1 or lines is None else b[lines]
        exact_counts = count_true(exact_scores(exact_a, exact_b) > _along(_pick(thresholds, lines), dim), dim)
        checked = line_lo < float("inf")
        if lines is None:
            counts = torch.where(checked, exact_counts, counts)
        else:
            counts[lines] = torch.where(checked, exact_counts, counts[lines])
        return counts
    r, c = band.nonzero(as_tuple=True)
    if lines is not None:
        r, c = (lines[r], c) if dim == 1 else (r, lines[c])
    line = r if dim == 1 else c
    higher = pair_dots(a, b, r, c) > thresholds[line]
    counts.index_add_(0, line, higher.long())
    return counts


def _narrow(
    block: torch.Tensor, keep: torch.Tensor, lines: torch.Tensor | None, dim: int
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Restrict a block, whose lines are the global `lines` (None: all, in order), to the lines where `keep` holds.

    Returns (block, global lines, positions kept within the old block), with None for "all of them": (None, ...) when
    nothing is kept; the block itself when more than a quarter of the lines are (beyond that, copying them out costs
    about as much as comparing all of them, rows or columns alike); else a copy of the kept lines.
    """
    kept = keep.nonzero().squeeze(1)
    if kept.numel() == 0:
        return None, None, None
    if kept.numel() * 4 > keep.numel():
        return block, lines, None
    return block.index_select(1 - dim, kept), kept if lines is None else lines[kept], kept


def _pick(values: torch.Tensor, lines: torch.Tensor | None) -> torch.Tensor:
    return values if lines is None else values[lines]


def _along(values: torch.Tensor, dim: int) -> torch.Tensor:
    """One value per line, shaped to broadcast against a block: a column for rows (dim=1), a row for columns."""
    return values[:, None] if dim == 1 else values[None, :]
