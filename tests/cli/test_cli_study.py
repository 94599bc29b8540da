"""`clipctl study run | paired | by-batch | diagnostics`: files written and announced, bad input refused in one
line with exit 2 and nothing written, and one real study end to end (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w
from helpers.paths import REPO_ROOT
from helpers.trainkit import make_tiny_shapes, tiny_overrides

from clipctl.recipe import parse_override


def write_compare(folder: Path) -> Path:
    groups = [
        {"label": label, "kind": "measured", "seeds": [0, 1], "metrics": {"average": {"values": v, "mean": 0.2}}}
        for label, v in (("clip_b16", [0.20, 0.21]), ("sogclr_b16", [0.25, 0.27]))
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "compare.json").write_text(json.dumps({"groups": groups}))
    return folder / "compare.json"


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_paired_and_by_batch_write_beside_the_input_or_into_out(run_cli, tmp_path):
    source = write_compare(tmp_path / "results")
    code, out, err = run_cli("study", "paired", source)
    assert code == 0 and out == "" and f"wrote {tmp_path / 'results' / 'paired.md'}" in err
    assert (tmp_path / "results" / "paired.json").is_file()
    code, _, err = run_cli("study", "by-batch", source, "--out", tmp_path / "plots")
    assert code == 0 and f"wrote {tmp_path / 'plots' / 'by_batch.png'}" in err
    assert not (tmp_path / "results" / "by_batch.png").exists()


def test_diagnostics_reads_the_runs_folder(run_cli, tmp_path):
    run = tmp_path / "runs" / "clip_b16-lr-0.001-seed0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": "completed"}))
    (run / "metrics.jsonl").write_text(json.dumps({"type": "train", "loss": 2.5}) + "\n")
    code, _, err = run_cli("study", "diagnostics", tmp_path / "runs", tmp_path / "results")
    assert code == 0 and "diagnostics.md" in err
    (row,) = json.loads((tmp_path / "results" / "diagnostics.json").read_text())["groups"]
    assert row == {"group": "clip_b16-lr-0.001", "n": 1, "loss": 2.5, "stale_I_run": None, "stale_T_run": None}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["study", "paired", "{tmp}/nope.json"], "nope.json: no such file; write it with clipctl compare RUNS --json"),
        (["study", "by-batch", "{tmp}/bad.json"], "bad.json: not JSON"),
        (["study", "diagnostics", "{tmp}/noruns", "{tmp}/out"], "noruns: not a folder of runs"),
        (["study", "run", "{tmp}/norecipes", "--key", "optim.lr", "--grid-out", "{tmp}/g", "--results", "{tmp}/out"],
         "norecipes: no such recipe file or folder"),
        (["study", "run", "QUICK", "--key", "optim.lr", "--values", "1e-3", "--factors", "1",
          "--grid-out", "{tmp}/g", "--results", "{tmp}/out"], "--values and --factors: give one"),
        (["study", "run", "QUICK", "--key", "optim.lr", "--seeds", "0,x", "--grid-out", "{tmp}/g",
          "--results", "{tmp}/out"], "--seeds '0,x': give int values separated by commas"),
        (["study", "run", "QUICK", "--key", "optim.lr", "--factors", ",", "--grid-out", "{tmp}/g",
          "--results", "{tmp}/out"], "--factors: empty"),
        (["study", "run", "QUICK", "--key", "optim.lr", "--seeds", "0 1", "--grid-out", "{tmp}/g",
          "--results", "{tmp}/out"], "seeds besides 0 train final runs: give --out"),
        (["study", "run", "QUICK", "--key", "optim.nope", "--grid-out", "{tmp}/g", "--results", "{tmp}/out"],
         "optim.nope: no such recipe key"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_nothing_written(run_cli, tmp_path, args, says):
    (tmp_path / "bad.json").write_text("{")
    quickstart = REPO_ROOT / "recipes" / "quickstart.toml"
    argv = [str(a).replace("{tmp}", str(tmp_path)).replace("QUICK", str(quickstart)) for a in args]
    code, out, err = run_cli(*argv)
    assert code == 2 and out == ""
    assert says in one_error_line(err) and one_error_line(err).startswith("clipctl: error: ")
    assert not (tmp_path / "out").exists() and not (tmp_path / "g").exists()


def tiny_study_recipe(folder: Path, shapes: Path) -> Path:
    """The quickstart shrunk to seconds (tests/helpers/trainkit.py), as a recipe file a study can read."""
    sections: dict[str, dict] = {}
    for override in tiny_overrides(shapes, **{"train.epochs": 1}):
        (section, key), value = parse_override(override)
        sections.setdefault(section, {})[key] = value
    folder.mkdir()
    recipe = folder / "tiny_b32.toml"
    recipe.write_text(f'extends = "{REPO_ROOT / "recipes" / "quickstart.toml"}"\n\n' + tomli_w.dumps(sections))
    return recipe


@pytest.mark.slow
def test_a_study_chooses_on_validation_trains_the_seeds_and_writes_its_results(run_cli, tmp_path):
    recipe = tiny_study_recipe(tmp_path / "recipes", make_tiny_shapes(tmp_path / "data"))
    args = ["study", "run", tmp_path / "recipes", "--key", "optim.lr", "--values", "0.001,0.002", "--widen", "0"]
    args += ["--seeds", "0,1", "--grid-out", tmp_path / "grid", "--out", tmp_path / "final"]
    code, _, err = run_cli(*args, "--results", tmp_path / "results", "--jobs", "2")
    assert code == 0, err
    grid = json.loads((tmp_path / "results" / "grid.json").read_text())
    value = grid["chosen"]["tiny_b32"]
    assert value in ("0.001", "0.002") and {row["value"] for row in grid["rows"]} == {"0.001", "0.002"}
    assert sorted(p.name for p in (tmp_path / "final").iterdir() if p.name != "logs") == [
        f"tiny_b32-lr-{value}-seed0",
        f"tiny_b32-lr-{value}-seed1",
    ]
    assert recipe.stem in (tmp_path / "results" / "compare.md").read_text()
    for name in ("compare.json", "compare.png", "paired.md", "by_batch.png", "diagnostics.md"):
        assert (tmp_path / "results" / name).is_file() and f"wrote {tmp_path / 'results' / name}" in err
    groups = json.loads((tmp_path / "results" / "diagnostics.json").read_text())["groups"]
    assert [(g["group"], g["n"]) for g in groups] == [(f"tiny_b32-lr-{value}", 2)]
    code, _, err = run_cli(*args, "--results", tmp_path / "results", "--jobs", "2")  # a rerun trains nothing
    assert code == 0 and "done" not in err
