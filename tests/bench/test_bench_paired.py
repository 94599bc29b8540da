"""bench/_paired.py: groups whose recipe names differ in one factor (towers, loss, batch) are paired seed by seed."""

from __future__ import annotations

import json
import sys

import pytest
from helpers.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))

import _paired  # noqa: E402


def group(label: str, seeds: list[int], averages: list[float], kind: str = "measured") -> dict:
    metrics = {m: {"values": [a + (0.01 if m == "tr@1" else 0.0) for a in averages]} for m in _paired.METRICS}
    return {"label": label, "kind": kind, "seeds": seeds, "metrics": metrics}


def test_pairs_differ_in_one_factor_and_are_taken_seed_by_seed(tmp_path):
    groups = [
        group("towers_sogclr_b32-lr-0.004", [2, 0, 1], [0.30, 0.20, 0.26]),  # seeds out of order: matched by seed
        group("towers_clip_b32", [0, 1, 2], [0.21, 0.24, 0.31]),
        group("towers_clip_b8", [0, 1], [0.10, 0.12]),
        group("othertowers_sogclr_b8", [0, 1], [0.5, 0.5]),  # differs from towers_clip_b8 in towers and loss
        group("SogCLR [published]", [None], [0.16], kind="published"),
    ]
    (tmp_path / "compare.json").write_text(json.dumps({"groups": groups}))
    _paired.write_paired(tmp_path / "compare.json")
    rows = {(r["first"], r["second"]): r for r in json.loads((tmp_path / "paired.json").read_text())["pairs"]}
    assert set(rows) == {("towers_clip_b8", "towers_clip_b32"), ("towers_clip_b32", "towers_sogclr_b32-lr-0.004")}
    assert rows["towers_clip_b8", "towers_clip_b32"]["factor"] == "batch"
    loss = rows["towers_clip_b32", "towers_sogclr_b32-lr-0.004"]  # the chosen lr is no factor
    assert loss["seeds"] == [0, 1, 2] and loss["factor"] == "loss"
    assert loss["average"]["deltas"] == pytest.approx([-1.0, 2.0, -1.0])
    assert loss["average"]["mean"] == pytest.approx(0.0) and loss["average"]["second_higher"] == 1
    batch = rows["towers_clip_b8", "towers_clip_b32"]  # natural order: b8 first; seed 2 only in one group
    assert batch["seeds"] == [0, 1] and batch["tr@1"]["deltas"] == pytest.approx([11.0, 12.0])
    table = (tmp_path / "paired.md").read_text()
    row = "| towers_clip_b32 | towers_sogclr_b32-lr-0.004 | loss | 0, 1, 2 | -1.00, +2.00, -1.00 | +0.00 ± 1.73 | 1/3 |"
    assert row in table


def test_a_pair_differs_in_exactly_one_factor():
    assert _paired.differing_factor("cliptowers_clip_b8", "cliptowers_sogclr_b8") == "loss"
    assert _paired.differing_factor("cliptowers_clip_b8", "sogclrtowers_clip_b8") == "towers"
    assert _paired.differing_factor("cliptowers_clip_b8", "sogclrtowers_sogclr_b8") is None
    assert _paired.differing_factor("clip_b16", "sogclr_g1_b16") == "loss"  # a loss's settings are part of it
    assert _paired.differing_factor("isogclr_new_b32", "isogclr_new_v2_b32") == "loss"
    assert _paired.differing_factor("isogclr_new_b32", "isogclr_new_v2_b256") is None
    assert _paired.differing_factor("sogclr_g08_b16", "sogclr_g08_b128-lr-0.004") == "batch"
    assert _paired.differing_factor("clip_b16", "clip_b16") is None
    assert _paired.factors("quickstart") == {"towers": "", "loss": "quickstart", "batch": ""}
