"""Opening what a dataset reference names for evaluation: "ID[:split]" of a registered dataset, or a path, as in a
recipe's `eval.val_*`/`eval.test_*` (`clipctl eval --dataset` goes through `clipctl.evaluate.benchmarks`).

Apart from `clipctl.data.datasets` so that DataLoader workers, which import that module to rebuild a dataset, do
not import every dataset family with it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipctl.data.datasets import open_eval_set
from clipctl.data.images import OnBadImage
from clipctl.data.records import Role
from clipctl.data.registry import locate, parse_ref
from clipctl.data.text import clean_caption
from clipctl.errors import UsageError


def open_reference(
    ref: str,
    role: Role,
    root: Path,
    transform: Callable,
    *,
    on_bad_image: OnBadImage = "skip",
    clean_text: Callable[[str], str] = clean_caption,
) -> Any:
    """The evaluation set a reference names ("ID[:split]" or a path, as in `eval.val_*`/`eval.test_*` and
    `clipctl eval --dataset`), read by its layout's reader; a registered split of another role is a UsageError
    naming the splits that fit."""
    located = locate(ref, root)
    if located.role is not None and located.role != role:
        spec = parse_ref(ref).spec
        fits = [parse_ref(ref).source(s) for s, split in (spec.splits if spec else {}).items() if split.role == role]
        raise UsageError(
            f"{ref}: a {located.role} split, not a {role} set; choose {' or '.join(fits) or 'another dataset'}"
        )
    return open_eval_set(located.path, role, transform, on_bad_image=on_bad_image, what=ref, clean_text=clean_text)
