"""bench/_by_batch.py: study cells grouped by recipe family and ordered by batch, drawn to by_batch.png."""

from __future__ import annotations

import json
import sys

import pytest
from helpers.paths import REPO_ROOT
from PIL import Image

sys.path.insert(0, str(REPO_ROOT / "bench"))

import _by_batch  # noqa: E402


def group(label: str, mean: float, std: float | None, kind: str = "measured") -> dict:
    return {"label": label, "kind": kind, "metrics": {"average": {"mean": mean, "std": std}}}


def test_cells_are_grouped_by_family_and_sorted_by_batch(tmp_path):
    groups = [
        group("towers_clip_b128-lr-0.008", 0.35, 0.01),
        group("towers_clip_b8-lr-0.002", 0.28, 0.002),
        group("towers_sogclr_b8", 0.33, None),  # one seed: no std
        group("CLIP (benchmark) [published]", 0.14, None, kind="published"),
        group("quickstart", 0.11, 0.0),  # no batch in its name
    ]
    lines = _by_batch.families(groups)
    assert list(lines) == ["towers_clip", "towers_sogclr"]
    assert lines["towers_clip"] == [(8, pytest.approx(28.0), pytest.approx(0.2)), (128, 35.0, pytest.approx(1.0))]
    assert lines["towers_sogclr"] == [(8, 33.0, 0.0)]
    (tmp_path / "compare.json").write_text(json.dumps({"groups": groups}))
    out = _by_batch.plot_by_batch(tmp_path / "compare.json")
    assert out == tmp_path / "by_batch.png" and Image.open(out).size[0] > 0
