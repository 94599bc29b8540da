"""report/study/runner.py and grid.py: a value is chosen on validation, a grid whose best value is its edge is
widened, and final runs at a superseded value stop the study before it trains anything."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from helpers.paths import REPO_ROOT

from clipctl.errors import EXIT_RUN_CONFLICT, ClipctlError, RunConflictError, UsageError
from clipctl.report.study import jobs, runner
from clipctl.report.study.grid import grid_values, widened
from clipctl.report.study.jobs import Job

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
    assert widened(values, best) == beyond


def fake_train(peaks: dict[str, float]):
    """Stands in for `clipctl train`: a summary whose validation objective peaks (in log lr) at peaks[recipe];
    like the real one, a finished run is kept."""
    trained: list[str] = []

    def train(job: Job, threads: int) -> Path:
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


def plan(tmp_path, recipes: Path, **changes) -> runner.StudyPlan:
    settings = {
        "recipes": runner.study_recipes(recipes),
        "key": "optim.lr",
        "values": None,
        "factors": [0.5, 1.0, 2.0],
        "seeds": [0],
        "grid_out": tmp_path / "grid",
        "out": None,
        "results": tmp_path / "results",
        "parallel": 1,
    }
    return runner.StudyPlan(**{**settings, **changes})


def run_study(monkeypatch, study: runner.StudyPlan) -> dict:
    reported: list[Path] = []
    monkeypatch.setattr(runner, "write_study_results", lambda out, results: reported.append(out) or [])
    runner.run_study(study)
    return json.loads((study.results / "grid.json").read_text())


@pytest.fixture
def recipes(tmp_path) -> Path:
    folder = tmp_path / "recipes"
    folder.mkdir()
    for name in ("interior", "far"):
        (folder / f"{name}.toml").write_text(f'extends = "{QUICKSTART}"\n\n[optim]\nlr = 0.001\n')
    (folder / "base.toml").write_text(f'extends = "{QUICKSTART}"\n')  # what the cells extend: no cell itself
    return folder


def test_an_edge_is_widened_until_the_best_is_inside_or_the_limit(monkeypatch, tmp_path, recipes):
    train, trained = fake_train({"interior": 0.001, "far": 0.1})
    monkeypatch.setattr(jobs, "train", train)
    grid = run_study(monkeypatch, plan(tmp_path, recipes, widen=2))
    assert grid["chosen"] == {"far": "0.008", "interior": "0.001"}
    assert grid["widened"] == {"interior": [], "far": ["0.004", "0.008"]}
    assert grid["still_at_edge"] == ["far"]
    assert len(trained) == len(set(trained)) == 3 + 5  # every grid point trained once, across the rounds
    assert len(grid["load"]) == 3 and grid["selected_on"].startswith("validation split")


def test_final_runs_at_a_superseded_value_stop_the_study(monkeypatch, tmp_path, recipes):
    train, trained = fake_train({"interior": 0.001, "far": 0.001})
    monkeypatch.setattr(jobs, "train", train)
    stale = tmp_path / "final" / "far-lr-0.002-seed1"
    stale.mkdir(parents=True)
    study = plan(tmp_path, recipes, out=tmp_path / "final", seeds=[0, 1])
    with pytest.raises(
        RunConflictError, match="far-lr-0.002-seed1 was trained at another optim.lr than the chosen 0.001"
    ) as err:
        run_study(monkeypatch, study)
    assert err.value.exit_code == EXIT_RUN_CONFLICT
    assert stale.is_dir() and not (tmp_path / "final" / "far-lr-0.001-seed1").exists()
    assert all("seed1" not in name for name in trained)


def test_seed_0_is_copied_from_the_grid_and_the_others_trained_then_reported(monkeypatch, tmp_path, recipes):
    train, trained = fake_train({"interior": 0.001, "far": 0.001})
    monkeypatch.setattr(jobs, "train", train)
    reported: list[Path] = []
    monkeypatch.setattr(runner, "write_study_results", lambda out, results: reported.append(out) or [])
    runner.run_study(plan(tmp_path, recipes, out=tmp_path / "final", seeds=[0, 1, 2]))
    final = sorted(p.name for p in (tmp_path / "final").iterdir())
    assert final == [f"{r}-lr-0.001-seed{s}" for r in ("far", "interior") for s in (0, 1, 2)]
    assert [n for n in trained if "seed0" not in n] == [
        f"{r}-lr-0.001-seed{s}" for r in ("far", "interior") for s in (1, 2)
    ]
    assert reported == [tmp_path / "final"]


def test_bad_plans_are_refused_before_anything_trains(monkeypatch, tmp_path, recipes):
    train, trained = fake_train({"interior": 0.001, "far": 0.001})
    monkeypatch.setattr(jobs, "train", train)
    with pytest.raises(UsageError, match="give --out"):
        runner.run_study(plan(tmp_path, recipes, seeds=[0, 1]))
    with pytest.raises(UsageError, match="optim.nope"):
        runner.run_study(plan(tmp_path, recipes, key="optim.nope"))
    with pytest.raises(UsageError, match="optim.lr"):
        runner.run_study(plan(tmp_path, recipes, values=["fast"], factors=None))
    with pytest.raises(UsageError, match="not a number, so --factors cannot scale it; give --values"):
        grid_values(recipes / "far.toml", "loss.name", None, [0.5, 2.0])
    with pytest.raises(UsageError, match="no such recipe file or folder"):
        runner.study_recipes(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no recipe"):
        runner.study_recipes(tmp_path / "empty")
    assert trained == [] and not (tmp_path / "grid").exists() and not (tmp_path / "results").exists()


def test_a_run_is_one_clipctl_train_that_resumes(tmp_path):
    job = Job(Path("recipes/study2/a/clip_b16.toml"), "optim.lr", "0.001", 2, tmp_path / "final")
    assert job.command()[1:] == [
        "-m", "clipctl", "train", "recipes/study2/a/clip_b16.toml", "optim.lr=0.001", "run.seed=2",
        "--name", "clip_b16-lr-0.001-seed2", "--out", str(tmp_path / "final"), "--resume", "restart",
    ]  # fmt: skip


@pytest.mark.parametrize(("code", "exit_code"), [(2, 1), (130, 130)])
def test_a_failed_run_names_its_log_and_an_interrupted_one_stays_interrupted(monkeypatch, tmp_path, code, exit_code):
    job = Job(tmp_path / "broken.toml", "optim.lr", "0.001", 0, tmp_path / "grid")
    script = f"import sys; print('bad recipe'); sys.exit({code})"
    monkeypatch.setattr(Job, "command", lambda self: [sys.executable, "-c", script])
    with pytest.raises(
        ClipctlError, match=rf"study: broken-lr-0.001-seed0 failed \(exit {code}\); see .*seed0.log"
    ) as err:
        jobs.train(job, threads=1)
    assert err.value.exit_code == exit_code
    assert (tmp_path / "grid" / "logs" / "broken-lr-0.001-seed0.log").read_text() == "bad recipe\n"
