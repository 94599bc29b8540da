"""Evaluation: retrieval recall@k, zero-shot classification, the selection objective and encoding.

Metrics follow specs/eval.md (CLIP_benchmark conventions): TR = image->text, IR = text->image, fractions in Python.
"""

from __future__ import annotations

import importlib
from typing import Any

from clipctl.evaluate.objective import objective as objective  # light, and its name is also its module's: bound here

# Loaded on first use (PEP 562): `clipctl eval` checks its arguments and datasets through
# clipctl.evaluate.benchmarks before anything imports torch.
_EXPORTS = {
    "Encoded": "encode",
    "encode_images": "encode",
    "encode_texts": "encode",
    "evaluate_split": "splits",
    "retrieval_metrics": "retrieval",
    "zeroshot_accuracy": "zeroshot",
    "zeroshot_classifier": "zeroshot",
}

__all__ = sorted([*_EXPORTS, "objective"])


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
