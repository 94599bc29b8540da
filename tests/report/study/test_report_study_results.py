"""report/study/results.py: a study's results folder holds the comparison exactly as `clipctl compare` prints it,
then the paired differences, the by-batch plot and the diagnostics read from it."""

from __future__ import annotations

import json

import pytest
from helpers.rundirs import make_run

from clipctl.report.study.results import write_study_results


def test_the_study_writes_what_compare_prints_and_what_is_read_from_it(run_cli, tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    for seed in range(2):
        make_run(runs, f"clip_b16-lr-0.001-seed{seed}", loss="clip", seed=seed, tr1=0.20 + 0.01 * seed)
        make_run(runs, f"sogclr_b16-lr-0.001-seed{seed}", loss="sogclr", seed=seed, tr1=0.26 + 0.02 * seed)
    written = write_study_results(runs, results)
    names = ["compare.json", "compare.md", "compare.png", "paired.md", "by_batch.png", "diagnostics.md"]
    assert written == [results / name for name in names]
    assert sorted(p.name for p in results.iterdir()) == sorted(
        ["compare.json", "compare.md", "compare.png", "paired.json", "paired.md", "by_batch.png"]
        + ["diagnostics.json", "diagnostics.md"]
    )
    for flag, name in (("--json", "compare.json"), ("--markdown", "compare.md")):
        code, out, _ = run_cli("compare", runs, flag)
        assert code == 0 and (results / name).read_text() == out
    (pair,) = json.loads((results / "paired.json").read_text())["pairs"]
    assert (pair["first"], pair["second"], pair["factor"]) == ("clip_b16-lr-0.001", "sogclr_b16-lr-0.001", "loss")
    assert pair["tr@1"]["deltas"] == pytest.approx([6.0, 7.0])
    groups = {g["group"]: g["n"] for g in json.loads((results / "diagnostics.json").read_text())["groups"]}
    assert groups == {"clip_b16-lr-0.001": 2, "sogclr_b16-lr-0.001": 2}


def test_a_study_without_batches_in_its_names_gets_no_by_batch_plot(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    make_run(runs, "quickstart-lr-0.001-seed0", loss="clip")
    written = write_study_results(runs, results)
    assert results / "by_batch.png" not in written and not (results / "by_batch.png").exists()
    assert (results / "paired.md").is_file() and (results / "diagnostics.md").is_file()
