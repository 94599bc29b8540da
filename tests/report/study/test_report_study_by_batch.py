"""report/study/by_batch.py: study cells grouped by recipe family and ordered by batch, drawn to by_batch.png."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from clipctl.errors import UsageError
from clipctl.report.study import by_batch


def group(label: str, mean: float | None, std: float | None, kind: str = "measured") -> dict:
    return {"label": label, "kind": kind, "metrics": {"average": {"mean": mean, "std": std}}}


def test_cells_are_grouped_by_family_and_sorted_by_batch(tmp_path):
    groups = [
        group("towers_clip_b128-lr-0.008", 0.35, 0.01),
        group("towers_clip_b8-lr-0.002", 0.28, 0.002),
        group("towers_sogclr_b8", 0.33, None),  # one seed: no std
        group("CLIP (benchmark) [published]", 0.14, None, kind="published"),
        group("quickstart", 0.11, 0.0),  # no batch in its name
        group("towers_clip_b16", None, None),  # no test average: not a point
    ]
    lines = by_batch.families(groups)
    assert list(lines) == ["towers_clip", "towers_sogclr"]
    assert lines["towers_clip"] == [(8, pytest.approx(28.0), pytest.approx(0.2)), (128, 35.0, pytest.approx(1.0))]
    assert lines["towers_sogclr"] == [(8, 33.0, 0.0)]
    (tmp_path / "compare.json").write_text(json.dumps({"groups": groups}))
    out = by_batch.plot_by_batch(tmp_path / "compare.json")
    assert out == tmp_path / "by_batch.png" and Image.open(out).size == (840, 540)


def test_a_dollar_in_a_family_name_is_drawn_not_parsed_as_maths(tmp_path):
    (tmp_path / "compare.json").write_text(json.dumps({"groups": [group("$x_b8", 0.3, 0.01)]}))
    out = by_batch.plot_by_batch(tmp_path / "compare.json", tmp_path / "plots")
    assert out == tmp_path / "plots" / "by_batch.png" and Image.open(out).size == (840, 540)


def test_nothing_to_plot_is_refused_and_nothing_written(tmp_path):
    (tmp_path / "compare.json").write_text(json.dumps({"groups": [group("quickstart", 0.11, 0.0)]}))
    with pytest.raises(UsageError, match="no measured group named <loss>_b<batch>"):
        by_batch.plot_by_batch(tmp_path / "compare.json")
    assert not (tmp_path / "by_batch.png").exists()
