"""report/study/stats.py: the paired-t interval, the sign count and the exact sign test, against values worked
out by hand (t quantiles from tables: t(0.975, 2) = 4.302653, t(0.975, 4) = 2.776445)."""

from __future__ import annotations

import math

import pytest

from clipctl.report.study.stats import PairedStats


def test_three_differences_give_the_t_interval_with_two_degrees_of_freedom():
    s = PairedStats([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.std == 1.0
    half = 4.302653 / math.sqrt(3)  # 2.484138
    assert s.interval == pytest.approx((2.0 - half, 2.0 + half), abs=1e-6)
    assert s.second_higher == 3 and s.sign_p == pytest.approx(0.25)  # 2 · (1/2)^3
    assert not s.called  # 3/3 seeds, yet the interval (-0.48, 4.48) holds 0


def test_a_tight_difference_is_called():
    s = PairedStats([5.36, 5.22, 5.32])  # study 2 B, clip towers, batch 8: SogCLR − CLIP
    sd = math.sqrt(((5.36 - 5.3) ** 2 + (5.22 - 5.3) ** 2 + (5.32 - 5.3) ** 2) / 2)  # 0.0721
    lo, hi = s.interval
    assert lo == pytest.approx(5.3 - 4.302653 * sd / math.sqrt(3), abs=1e-6) and lo > 0
    assert hi == pytest.approx(5.3 + 4.302653 * sd / math.sqrt(3), abs=1e-6)
    assert s.called


def test_five_seeds_all_won_give_p_one_sixteenth_and_a_negative_interval_is_called():
    s = PairedStats([-1.0, -2.0, -1.5, -2.5, -3.0])
    assert s.second_higher == 0 and s.sign_p == pytest.approx(2 / 32)  # 0.0625
    sd = math.sqrt(sum((d + 2.0) ** 2 for d in s.deltas) / 4)
    assert s.interval == pytest.approx((-2.0 - 2.776445 * sd / math.sqrt(5), -2.0 + 2.776445 * sd / math.sqrt(5)))
    assert s.interval[1] < 0 and s.called


def test_one_seed_has_no_interval_and_is_never_called():
    s = PairedStats([4.0])
    assert s.std is None and s.interval is None and not s.called
    assert s.sign_p == pytest.approx(1.0)  # one sign out of one: P(X = 1) + P(X = 0) at p = 1/2
    assert s.to_json()["ci95"] is None and s.to_json()["called"] is False


def test_ties_carry_no_sign_and_all_ties_give_p_one():
    mixed = PairedStats([0.0, 1.0, 2.0, 3.0])  # the tie is left out: 3 of 3 non-zero differences
    assert mixed.second_higher == 3 and mixed.sign_p == pytest.approx(0.25)
    flat = PairedStats([0.0, 0.0, 0.0])
    assert flat.sign_p == 1.0 and flat.interval == (0.0, 0.0) and not flat.called


def test_equal_differences_give_a_zero_width_interval_that_excludes_zero():
    s = PairedStats([2.0, 2.0])
    assert s.interval == (2.0, 2.0) and s.called


def test_json_keeps_the_old_keys_and_adds_the_interval_and_the_test():
    row = PairedStats([1.0, 2.0, 3.0]).to_json()
    assert set(row) == {"deltas", "mean", "std", "second_higher", "ci95", "sign_test_p", "called"}
    assert row["ci95"] == pytest.approx([-0.484138, 4.484138], abs=1e-6)
