"""The selection objective: the mean of TR@1, IR@1 and ACC@1."""

from __future__ import annotations

import pytest

from clipctl.evaluate import objective


def test_objective_is_the_mean_of_the_three_top1_numbers() -> None:
    assert objective(0.3, 0.6, 0.9) == pytest.approx(0.6)
    assert objective(0.0, 0.0, 0.0) == 0.0
    assert objective(1.0, 1.0, 1.0) == 1.0
    assert objective(12.0, 9.0, 21.0) == pytest.approx(14.0)  # units pass through (percentages in tables)
