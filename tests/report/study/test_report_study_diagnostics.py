"""report/study/diagnostics.py: a study's final runs, grouped over seeds, with the loss diagnostics that explain
them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers.paths import REPO_ROOT

from clipctl.errors import UsageError
from clipctl.report.study import diagnostics


def fake_run(out: Path, name: str, steps: list[dict], status: str = "completed") -> None:
    run = out / name
    run.mkdir(parents=True)
    records = [{"type": "train", "step": i, **step} for i, step in enumerate(steps)]
    records.insert(1, {"type": "eval", "split": "val", "stale_I": 99.0})  # not a train record: ignored
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (run / "summary.json").write_text(json.dumps({"status": status}))


def test_groups_average_their_seeds_and_staleness_over_the_run(tmp_path):
    first_visit = {"tau_I_mean": 0.05, "stale_I": math.nan}  # no revisit yet: NaN, not counted
    fake_run(tmp_path, "v2_b16-lr-0.001-seed0", [first_visit, {"tau_I_mean": 0.04, "tau_I_std": 0.002, "stale_I": 0.6}])
    fake_run(tmp_path, "v2_b16-lr-0.001-seed1", [first_visit, {"tau_I_mean": 0.02, "tau_I_std": 0.004, "stale_I": 0.2}])
    fake_run(tmp_path, "v2_b16-lr-0.001-seed2", [{"tau_I_mean": 0.5}], status="interrupted")  # not final: left out
    fake_run(tmp_path, "clip_b16-seed0", [{"loss": 3.0}, {"loss": 2.0}])
    (tmp_path / "logs").mkdir()  # a study's log folder is no run
    md = diagnostics.write_diagnostics(tmp_path, tmp_path / "results")
    rows = {r["group"]: r for r in json.loads((tmp_path / "results" / "diagnostics.json").read_text())["groups"]}
    assert set(rows) == {"v2_b16-lr-0.001", "clip_b16"}
    v2 = rows["v2_b16-lr-0.001"]
    assert v2["n"] == 2 and v2["tau_I_mean"] == pytest.approx(0.03) and v2["tau_I_std"] == pytest.approx(0.003)
    assert v2["stale_I"] == pytest.approx(0.4) and v2["stale_I_run"] == pytest.approx(0.4)
    assert rows["clip_b16"]["loss"] == 2.0 and rows["clip_b16"]["stale_I_run"] is None
    table = md.read_text()
    assert "| v2_b16-lr-0.001 | 2 | 0.0300 | 3.0e-03 | — | — | — | 0.40 | 0.40 | — | — |" in table
    assert "| clip_b16 | 1 | — | — | — | — | — | — | — | — | — |" in table


def test_the_committed_tables_render_again_from_their_json():
    """The markdown of every committed study's diagnostics.json is what this module writes (the footnote's
    staleness symbol of studies 1 and 2 was renamed since: |log(s·e^b / ĝ)| then, |ℓ − log ĝ| now, the same
    quantity)."""
    found = sorted((REPO_ROOT / "bench" / "results").glob("study*/**/diagnostics.json"))
    assert len(found) >= 3
    for path in found:
        payload = json.loads(path.read_text())
        rendered = diagnostics.markdown(payload["groups"], Path(payload["runs"]))
        renamed = rendered.replace("|ℓ − log ĝ|", "|log(s·e^b / ĝ)|")
        assert path.with_suffix(".md").read_text() in (rendered, renamed), path


def test_a_missing_runs_folder_is_refused_and_nothing_written(tmp_path):
    with pytest.raises(UsageError, match="not a folder of runs"):
        diagnostics.write_diagnostics(tmp_path / "nope", tmp_path / "results")
    assert not (tmp_path / "results").exists()
