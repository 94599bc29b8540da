"""Evaluation: retrieval recall@k, zero-shot classification, the selection objective and encoding.

Metrics follow specs/eval.md (CLIP_benchmark conventions): TR = image->text, IR = text->image, fractions in Python.
"""

from clipctl.evaluate.encode import Encoded, encode_images, encode_texts
from clipctl.evaluate.objective import objective
from clipctl.evaluate.retrieval import retrieval_metrics
from clipctl.evaluate.splits import evaluate_split
from clipctl.evaluate.zeroshot import zeroshot_accuracy, zeroshot_classifier

__all__ = [
    "Encoded",
    "encode_images",
    "encode_texts",
    "evaluate_split",
    "objective",
    "retrieval_metrics",
    "zeroshot_accuracy",
    "zeroshot_classifier",
]
