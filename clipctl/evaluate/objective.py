"""The report's selection metric: one number that model selection, early stopping and the tuner maximise."""

from __future__ import annotations


def objective(tr1: float, ir1: float, acc1: float) -> float:
    """(TR@1 + IR@1 + ACC@1) / 3, in the units of its inputs (clipctl passes fractions)."""
    return (tr1 + ir1 + acc1) / 3.0
