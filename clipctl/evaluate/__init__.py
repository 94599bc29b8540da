"""Evaluation: retrieval recall@k, zero-shot classification, the selection objective, encoding and ImageNet metadata.

Metrics follow specs/eval.md (CLIP_benchmark conventions): TR = image->text, IR = text->image, fractions in Python.
"""
from clipctl.evaluate.encode import Encoded, encode_images, encode_texts
from clipctl.evaluate.hooks import evaluate_split
from clipctl.evaluate.imagenet import imagenet_classnames, imagenet_templates, imagenet_wnids
from clipctl.evaluate.objective import objective
from clipctl.evaluate.retrieval import retrieval_metrics
from clipctl.evaluate.zeroshot import zeroshot_accuracy, zeroshot_classifier

__all__ = [
    "Encoded",
    "encode_images",
    "encode_texts",
    "evaluate_split",
    "imagenet_classnames",
    "imagenet_templates",
    "imagenet_wnids",
    "objective",
    "retrieval_metrics",
    "zeroshot_accuracy",
    "zeroshot_classifier",
]
