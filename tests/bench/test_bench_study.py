"""bench/_study.py: a value is chosen on validation, a grid whose best value is its edge is widened, and final
runs at a superseded value stop the study before it trains anything."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from helpers.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))

import _study  # noqa: E402

QUICKSTART = REPO_ROOT / "recipes" / "quickstart.toml"


@pytest.mark.parametrize(
    ("values", "best", "beyond"),
    [
        (["0.0005", "0.001", "0.002"], "0.002", "0.004"),
        (["0.0005", "0.001", "0.002"], "0.0005", "0.00025"),
        (["0.0005", "0.001", "0.002"], "0.001", None),
        (["1e-3", "3e-4", "1e-4"], "1e-4", "3.33e-05"),  # unsorted --values, same ratio as its neighbour
        (["0.001"], "0.001", None),
    ],
)
def test_widened_steps_beyond_the_edge_only(values, best, beyond):
    assert _study.widened(values, best) == beyond


def fake_train(peaks: dict[str, float]):
    """Stands in for `clipctl train`: a summary whose validation objective peaks (in log lr) at peaks[recipe];
    like the real one, a finished run is kept."""
    trained: list[str] = []

    def train(job: _study.Job, threads: int) -> Path:
        if (job.run_dir / "summary.json").is_file():
            return job.run_dir
        trained.append(job.name)
        job.run_dir.mkdir(parents=True, exist_ok=True)
        objective = 1.0 - abs(math.log(float(job.value) / peaks[job.recipe.stem]))
        summary = {"status": "completed", "best_epoch": 0, "best": {"val/objective": objective}}
        (job.run_dir / "summary.json").write_text(json.dumps(summary))
        (job.run_dir / "metrics.jsonl").write_text(json.dumps({"type": "train", "loss": 0.5}) + "\n")
        return job.run_dir

    return train, trained


def run_study(monkeypatch, tmp_path, recipes: Path, *extra: str) -> dict:
    argv = ["_study.py", str(recipes), "--key", "optim.lr", "--factors", "0.5", "1", "2", "--jobs", "1"]
    argv += ["--grid-out", str(tmp_path / "grid"), "--results", str(tmp_path / "results"), *extra]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(_study, "compare", lambda out, results: None)
    _study.main()
    return json.loads((tmp_path / "results" / "grid.json").read_text())


@pytest.fixture
def recipes(tmp_path) -> Path:
    folder = tmp_path / "recipes"
    folder.mkdir()
    for name in ("interior", "far"):
        (folder / f"{name}.toml").write_text(f'extends = "{QUICKSTART}"\n\n[optim]\nlr = 0.001\n')
    return folder


def test_an_edge_is_widened_until_the_best_is_inside_or_the_limit(monkeypatch, tmp_path, recipes):
    train, trained = fake_train({"interior": 0.001, "far": 0.1})
    monkeypatch.setattr(_study, "train", train)
    grid = run_study(monkeypatch, tmp_path, recipes, "--widen", "2")
    assert grid["chosen"] == {"interior": "0.001", "far": "0.008"}
    assert grid["widened"] == {"interior": [], "far": ["0.004", "0.008"]}
    assert grid["still_at_edge"] == ["far"]
    assert len(trained) == len(set(trained)) == 3 + 5  # every grid point trained once, across the rounds


def test_final_runs_at_a_superseded_value_stop_the_study(monkeypatch, tmp_path, recipes):
    train, trained = fake_train({"interior": 0.001, "far": 0.001})
    monkeypatch.setattr(_study, "train", train)
    stale = tmp_path / "final" / "far-lr-0.002-seed1"
    stale.mkdir(parents=True)
    with pytest.raises(SystemExit, match="far-lr-0.002-seed1 was trained at another optim.lr than the chosen 0.001"):
        run_study(monkeypatch, tmp_path, recipes, "--out", str(tmp_path / "final"), "--seeds", "0", "1")
    assert stale.is_dir() and not (tmp_path / "final" / "far-lr-0.001-seed1").exists()
    assert all("seed1" not in name for name in trained)
