"""The study store and runner: resume by journal replay, penalties for failures, pruning, parallel slots,
two workers on one study."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.tune_fakes import HERE, fake_command, run_worker, storage_url, write_recipes

from clipctl.errors import InterruptedRun
from clipctl.tune.phases import open_phase
from clipctl.tune.recipe import load_tune_recipe
from clipctl.tune.runner import PhaseWorker, SubprocessRunner, TrialLaunch, cpu_threads
from clipctl.tune.store import Study

GP_TUNE = """\
[tune]
base = "base.toml"
phase = 1
strategy = "gp"
n_trials = {n_trials}
n_initial = {n_initial}
seed = 3
[tune.fixed]
"train.epochs" = 3
[tune.space]
"loss.name" = ["sogclr", "isogclr_new"]
"optim.name" = ["adamw", "radam"]
"optim.lr" = {{ low = 1e-4, high = 1e-2, prior = "log-uniform" }}
"loss.rho_I" = {{ low = 1.0, high = 10.0 }}
"""


def events(study: Path) -> list[dict]:
    return Study(study).events(1)


def started(study: Path) -> dict[int, dict]:
    return {e["trial"]: e for e in events(study) if e["event"] == "trial_started" and not e.get("rerun")}


def worker_process(
    study: Path, tune: Path, parallel: int = 1, storage: str | None = None, heartbeat_s: float = 30.0, **env: str
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(HERE), "--worker", str(study), str(tune), str(parallel), storage or "", str(heartbeat_s)],
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(params=["journal", "sqlite"])
def storage(request, tmp_path) -> str | None:
    """Each key test on Optuna's journal file (the default) and on an RDB (SQLite)."""
    return storage_url(request.param, tmp_path)


class KilledAt(SubprocessRunner):
    """Dies like a killed tuner (KeyboardInterrupt) when asked to start trial `number`."""

    def __init__(self, number: int) -> None:
        super().__init__(fake_command(), gpus=[])
        self.number = number

    def start(self, launch: TrialLaunch, slot: int):
        if launch.trial == self.number:
            raise KeyboardInterrupt
        return super().start(launch, slot)


def test_resume_after_a_kill_proposes_what_an_uninterrupted_study_proposes(tmp_path, storage):
    tune = write_recipes(tmp_path, GP_TUNE.format(n_trials=5, n_initial=2))
    run_worker(str(tmp_path / "straight"), str(tune))
    expected = [started(tmp_path / "straight")[n]["proposed"] for n in range(1, 6)]

    killed = Study(tmp_path / "killed", storage=storage)
    recipe, path = load_tune_recipe(tune)
    with pytest.raises(InterruptedRun):
        PhaseWorker(killed, open_phase(killed, recipe, path), KilledAt(4), log=lambda _: None).run()
    assert sorted(started(killed.root)) == [1, 2, 3, 4]  # t004 was asked for, then the tuner died

    resumed = worker_process(
        killed.root, tune, storage=storage
    )  # a fresh process: rebuilds the optimizer from the journal
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "replaying" not in err  # every replayed proposal matched the journal
    assert [started(killed.root)[n]["proposed"] for n in range(1, 6)] == expected
    reruns = [e for e in events(killed.root) if e["event"] == "trial_started" and e.get("rerun")]
    assert [e["trial"] for e in reruns] == [4]
    state = killed.state().phase(1)
    assert [t.status for t in state.trials.values()] == ["completed"] * 5 and state.closed is not None


GRID_TUNE = """\
[tune]
base = "base.toml"
phase = 1
strategy = "grid"
n_trials = 10
prune = {prune}
prune_grace_epochs = 1
[tune.fixed]
"train.epochs" = {epochs}
[tune.space]
{space}
"""


def test_crashed_and_diverged_trials_are_failed_with_a_penalty_and_the_study_goes_on(tmp_path, storage):
    space = '"optim.name" = ["adamw", "rmsprop", "momentum", "radam"]\n"optim.lr" = [1e-3]'
    tune = write_recipes(tmp_path, GRID_TUNE.format(prune="false", epochs=3, space=space))
    run_worker(str(tmp_path / "study"), str(tune), storage=storage)
    state = Study(tmp_path / "study").state().phase(1)
    t1, t2, t3, t4 = (state.trials[n] for n in range(1, 5))
    assert (t1.status, t4.status) == ("completed", "completed") and not t1.flagged
    assert t2.status == "failed" and t2.flagged and "exit code 1" in t2.reason and "boom" in t2.reason
    assert t3.status == "failed" and t3.flagged and "diverged" in t3.reason and t3.raw is None
    assert t2.value < t1.value and t3.value < t1.value  # worse than the worst measured so far
    assert state.closed is not None and state.closed["failed"] == 2
    told = [e["value"] for e in events(tmp_path / "study") if e["event"] in ("trial_completed", "trial_failed")]
    assert len(told) == 4 and all(math.isfinite(v) for v in told)  # the optimizer is never told NaN/inf


def test_a_trial_below_the_median_is_pruned(tmp_path):
    space = '"optim.lr" = [1e-3, 2e-3, 5e-4, 1e-4]'
    tune = write_recipes(tmp_path, GRID_TUNE.format(prune="true", epochs=4, space=space))
    worker = worker_process(tmp_path / "study", tune, FAKE_EPOCH_SLEEP="0.4")
    _, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err
    state = Study(tmp_path / "study").state().phase(1)
    assert [state.trials[n].status for n in (1, 2, 3)] == ["completed"] * 3
    pruned = state.trials[4]  # lr = 1e-4 is far worse; after the grace epoch it is below the median
    assert pruned.status == "pruned" and pruned.flagged
    assert pruned.value < min(state.trials[n].value for n in (1, 2, 3))
    lines = (tmp_path / "study" / "phase1" / "t004" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) < 4  # stopped before its last epoch


def test_two_workers_share_one_study_without_losing_or_repeating_trials(tmp_path, storage):
    tune = write_recipes(tmp_path, GP_TUNE.format(n_trials=8, n_initial=6))
    study = tmp_path / "study"
    workers = [worker_process(study, tune, storage=storage, FAKE_EPOCH_SLEEP="0.2") for _ in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        assert "replaying" not in err
    log = events(study)
    starts = [e["trial"] for e in log if e["event"] == "trial_started"]
    finishes = [e["trial"] for e in log if e["event"] in ("trial_completed", "trial_failed", "trial_pruned")]
    assert sorted(starts) == sorted(finishes) == list(range(1, 9))
    assert len({e["worker"] for e in log if e["event"] == "trial_started"}) == 2  # both workers ran trials
    points = [json.dumps(e["proposed"], sort_keys=True) for e in log if e["event"] == "trial_started"]
    assert len(set(points)) == 8
    assert sum(e["event"] == "phase_closed" for e in log) == 1
    assert all((study / "phase1" / f"t{n:03d}" / "summary.json").is_file() for n in range(1, 9))


def test_parallel_slots_get_their_own_gpus_and_slot_number(tmp_path):
    space = '"optim.name" = ["adamw", "radam"]\n"optim.lr" = [1e-3, 2e-3]'
    tune = write_recipes(tmp_path, GRID_TUNE.format(prune="false", epochs=2, space=space))
    study = Study(tmp_path / "study")
    recipe, path = load_tune_recipe(tune)
    runner = SubprocessRunner([*fake_command(), "--slot={slot}"], parallel=2, gpus=["0", "1", "2", "3"])
    PhaseWorker(study, open_phase(study, recipe, path), runner, parallel=2, log=lambda _: None).run()
    summaries = [json.loads((study.root / "phase1" / f"t{n:03d}" / "summary.json").read_text()) for n in range(1, 5)]
    assert {s["slot"] for s in summaries} == {"0", "1"}
    assert all(s["cuda_visible_devices"] == ("0,1" if s["slot"] == "0" else "2,3") for s in summaries)
    first, second = [e for e in events(study.root) if e["event"] == "trial_started"][:2]
    assert first["ask"] == second["ask"]  # both slots were filled by one ask(n_points=2)
    assert all(s["omp_num_threads"] == os.environ.get("OMP_NUM_THREADS") for s in summaries)  # GPU trials: as it was


@pytest.mark.parametrize("preset", [None, "3"])
def test_parallel_cpu_trials_split_the_cores_unless_told(tmp_path, monkeypatch, preset):
    if preset is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", preset)
    monkeypatch.setattr("clipctl.tune.runner.cpu_threads", lambda parallel: 8 // parallel)  # an 8-core machine
    space = '"optim.name" = ["adamw", "radam"]\n"optim.lr" = [1e-3, 2e-3]'
    tune = write_recipes(tmp_path, GRID_TUNE.format(prune="false", epochs=1, space=space))
    study = Study(tmp_path / "study")
    recipe, path = load_tune_recipe(tune)
    runner = SubprocessRunner(fake_command(), parallel=2, gpus=[])
    PhaseWorker(study, open_phase(study, recipe, path), runner, parallel=2, log=lambda _: None).run()
    summaries = [json.loads((study.root / "phase1" / f"t{n:03d}" / "summary.json").read_text()) for n in range(1, 5)]
    assert [s["omp_num_threads"] for s in summaries] == [preset or "4"] * 4


def test_cpu_threads_never_fall_below_one():
    assert cpu_threads(10_000) == 1 and cpu_threads(1) >= 1
