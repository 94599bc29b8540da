"""The study's Optuna storage: plain Optuna sees the trials, bad storages are one-line errors, a SIGKILLed
worker's trial is failed after its heartbeat's grace period and re-run, and `--submit local` runs workers
through submitit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from helpers.output import without_warnings
from helpers.tune_fakes import HERE, grid_recipe, launcher, run_worker, storage_url, write_recipes
from optuna.storages import RDBStorage
from sqlalchemy.exc import IntegrityError

from clipctl.errors import UsageError
from clipctl.tune.storage import open_storage
from clipctl.tune.store import Study
from clipctl.tune.submit import local_shares


def one_line(err: str) -> None:
    err = without_warnings(err)
    assert err.count("\n") == 1 and err.startswith("clipctl: error: ") and "Traceback" not in err, err


def load(study: Study) -> optuna.Study:
    """The phase-1 study as any Optuna client (or `optuna-dashboard`) opens it: by URL or journal file."""
    label = study.storage_label()
    if "://" in label:
        return optuna.load_study(study_name="phase1", storage=label)
    backend = optuna.storages.journal.JournalFileBackend(label)
    return optuna.load_study(study_name="phase1", storage=optuna.storages.JournalStorage(backend))


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_plain_optuna_sees_the_trials_with_their_values_and_states(tmp_path, kind):
    tune = write_recipes(tmp_path, grid_recipe(["adamw", "rmsprop", "radam"], epochs=2))
    run_worker(str(tmp_path / "study"), str(tune), storage=storage_url(kind, tmp_path))
    study = Study(tmp_path / "study")
    trials = sorted(load(study).trials, key=lambda t: t.user_attrs["trial"])
    assert [t.state for t in trials] == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.COMPLETE,
    ]
    ours = study.phase_state(1).trials
    assert [t.value for t in trials if t.value is not None] == [ours[1].raw, ours[3].raw]
    assert trials[1].user_attrs["told"] == ours[2].value < ours[1].value and trials[1].user_attrs["flagged"]
    assert trials[0].params == {"optim.name": "adamw", "optim.lr": 1e-3}
    assert trials[0].intermediate_values and max(trials[0].intermediate_values.values()) == ours[1].raw


def test_the_dashboard_app_lists_the_phase_and_its_trials(tmp_path):
    dashboard = pytest.importorskip("optuna_dashboard")
    tune = write_recipes(tmp_path, grid_recipe(["adamw", "rmsprop"], epochs=2))
    run_worker(str(tmp_path / "study"), str(tune))
    app = dashboard.wsgi(Study(tmp_path / "study").storage_label())  # what `optuna-dashboard STORAGE` serves

    def get(path: str) -> dict:
        environ: dict = {}
        setup_testing_defaults(environ)
        environ["PATH_INFO"] = path
        status: list[str] = []
        body = b"".join(app(environ, lambda code, headers, exc_info=None: status.append(code)))
        assert status == ["200 OK"], body[:300]
        return json.loads(body)

    (summary,) = get("/api/studies")["study_summaries"]
    assert summary["study_name"] == "phase1" and summary["directions"] == ["maximize"]
    trials = get(f"/api/studies/{summary['study_id']}")["trials"]
    assert [(t["state"], t.get("values")) for t in trials] == [("Complete", [0.62]), ("Fail", None)]
    assert {"key": "trial", "value": "2"} in trials[1]["user_attrs"]


def test_a_bad_storage_url_is_one_line_exit_2_and_writes_no_study(tmp_path, run_cli):
    tune = write_recipes(tmp_path, grid_recipe(["adamw"], epochs=1))
    for url in ("nosuchdb://host/db", f"sqlite:///{tmp_path}/missing/dir/x.db"):
        code, _, err = run_cli(
            "tune", "--recipe", tune, "--study", tmp_path / "s", "--storage", url, "--launcher", launcher()
        )
        assert code == 2 and f"--storage {url}: cannot open it" in err
        one_line(err)
        assert not (tmp_path / "s" / "study.toml").exists()


def test_another_storage_for_an_existing_study_is_refused(tmp_path, run_cli):
    tune = write_recipes(tmp_path, grid_recipe(["adamw"], epochs=1))
    run_worker(str(tmp_path / "study"), str(tune))
    code, _, err = run_cli(
        "tune",
        "--recipe",
        tune,
        "--study",
        tmp_path / "study",
        "--storage",
        f"sqlite:///{tmp_path}/other.db",
        "--launcher",
        launcher(),
    )
    assert code == 2 and "keeps its trials in" in err and "optuna-journal.log" in err
    one_line(err)
    code, _, err = run_cli("tune", "status", "--study", tmp_path / "study")
    assert code == 0 and f"optuna-dashboard {tmp_path / 'study' / 'optuna-journal.log'}" in err


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_sigkilled_worker_s_trial_is_failed_after_the_grace_period_and_re_run(tmp_path, kind):
    tune = write_recipes(tmp_path, grid_recipe(["adamw"], epochs=3))
    study, storage = tmp_path / "study", storage_url(kind, tmp_path)
    env = {**os.environ, "FAKE_EPOCH_SLEEP": "1"}

    def worker() -> subprocess.Popen:  # heartbeat every 1 s: declared dead 4 s after its last beat
        return subprocess.Popen(
            [sys.executable, str(HERE), "--worker", str(study), str(tune), "1", storage or "", "1"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )

    doomed = worker()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        (study / "study.toml").exists() and 1 in (trials := Study(study).phase_state(1).trials) and trials[1].epochs
    ):
        time.sleep(0.1)
    doomed.send_signal(signal.SIGKILL)  # mid-trial, no sign-off: only the heartbeat can tell
    doomed.wait(timeout=30)
    killed_at = time.time()
    rescuer = worker()
    _, err = rescuer.communicate(timeout=300)
    assert rescuer.returncode == 0, err
    record = Study(study).phase_state(1).trials[1]
    assert record.status == "completed" and record.starts == 2 and not record.flagged
    attempts = sorted(load(Study(study)).trials, key=lambda t: t.number)
    assert [t.state for t in attempts] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert "stopped; trial re-run by" in attempts[0].user_attrs["reason"] and "told" not in attempts[0].user_attrs
    assert attempts[1].datetime_start.timestamp() - killed_at > 2.5  # waited for the grace period first
    assert attempts[0].user_attrs["worker"] != attempts[1].user_attrs["worker"]


def test_submit_local_runs_two_workers_through_submitit_to_the_end(tmp_path, run_cli, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("clipctl.tune.submit.cpu_threads", lambda sharers: 8 // sharers)  # an 8-core machine
    tune = write_recipes(tmp_path, grid_recipe(["adamw", "radam", "adam", "rmsprop"], epochs=2))
    study = tmp_path / "study"
    code, out, err = run_cli(
        "tune", "--recipe", tune, "--study", study, "--launcher", launcher(), "--submit", "local", "--workers", "2"
    )
    assert code == 0, err
    assert len(out.split()) == 2 and "submitted 2 `clipctl tune` worker(s)" in err
    state = Study(study).phase_state(1)
    assert [t.status for t in state.trials.values()] == ["completed", "completed", "completed", "failed"]
    assert state.closed is not None and (study / "submitit").is_dir()
    trial_summaries = [json.loads(path.read_text()) for path in sorted((study / "phase1").glob("t*/summary.json"))]
    assert trial_summaries and all(s["omp_num_threads"] == "4" for s in trial_summaries)  # 8 cores / 2 workers


def test_local_workers_split_the_machine(monkeypatch):
    monkeypatch.setattr("clipctl.tune.submit.visible_gpus", lambda: ["0", "1", "2", "3", "4"])
    assert local_shares(2, 2, parallel=1) == [
        (("CUDA_VISIBLE_DEVICES", "0,1"),),
        (("CUDA_VISIBLE_DEVICES", "2,3"),),
    ]
    with pytest.raises(UsageError, match="--workers 3 x --gpus-per-worker 2 needs 6 GPUs, this machine shows 5"):
        local_shares(3, 2, parallel=1)
    monkeypatch.setattr("clipctl.tune.submit.cpu_threads", lambda sharers: max(1, 12 // sharers))  # 12 cores
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert local_shares(3, 0, parallel=2) == [(("OMP_NUM_THREADS", "2"),)] * 3
    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # the user's choice stands
    assert local_shares(3, 0, parallel=2) == [()] * 3


def test_submit_slurm_without_sbatch_is_one_line_exit_2(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    tune = write_recipes(tmp_path, grid_recipe(["adamw"], epochs=1))
    code, _, err = run_cli("tune", "--recipe", tune, "--study", tmp_path / "s", "--submit", "slurm", "--workers", "2")
    assert code == 2 and "sbatch is not on PATH" in err and "--submit local" in err
    one_line(err)
    code, _, err = run_cli("tune", "--recipe", tune, "--study", tmp_path / "s", "--submit", "pbs")
    assert code == 2 and "--submit pbs: expected one of slurm, local" in err
    code, _, err = run_cli("tune", "--recipe", tune, "--study", tmp_path / "s", "--workers", "2")
    assert code == 2 and "go with --submit" in err
    code, _, err = run_cli("tune", "--recipe", tune, "--study", tmp_path / "s", "--submit", "local", "--retry-failed")
    assert code == 2 and "without --submit" in err


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: a refused command leaves this identical."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_relative_sqlite_url_is_recorded_absolute_and_found_from_another_folder(tmp_path, run_cli, monkeypatch):
    tune = write_recipes(tmp_path, grid_recipe(["adamw", "radam"], epochs=1))
    first, other, study = tmp_path / "first", tmp_path / "other", tmp_path / "study"
    first.mkdir()
    other.mkdir()
    monkeypatch.chdir(first)
    args = ("tune", "--recipe", tune, "--study", study, "--launcher", launcher())
    code, _, err = run_cli(*args, "--storage", "sqlite:///rel.db")
    assert code == 0, err
    assert f'storage = "sqlite:///{first / "rel.db"}"' in (study / "study.toml").read_text()
    monkeypatch.chdir(other)
    code, out, err = run_cli("tune", "status", "--study", study, "--json")
    assert code == 0 and json.loads(out)["phases"][0]["completed"] == 2, err
    code, _, err = run_cli(*args)  # resumes the same database: nothing to run again
    assert code == 0 and "resuming: 2 finished" in err and " started" not in err, err
    code, _, err = run_cli(*args, "--storage", "sqlite:///../first/rel.db")  # the same file, named from here
    assert code == 0 and "resuming: 2 finished" in err, err
    assert os.listdir(other) == [] and [t.starts for t in Study(study).phase_state(1).trials.values()] == [1, 1]
    code, _, err = run_cli(*args, "--storage", "sqlite:///rel.db")  # from here that is another file
    assert code == 2 and "keeps its trials in" in err and not (other / "rel.db").exists()
    one_line(err)


def test_a_relative_sqlite_url_recorded_by_an_older_release_is_still_the_same_storage(tmp_path, run_cli, monkeypatch):
    tune = write_recipes(tmp_path, grid_recipe(["adamw"], epochs=1))
    monkeypatch.chdir(tmp_path)
    run_worker(str(tmp_path / "study"), str(tune), storage="sqlite:///old.db")
    config = tmp_path / "study" / "study.toml"
    config.write_text(config.read_text().replace(f"sqlite:///{tmp_path / 'old.db'}", "sqlite:///old.db"))
    code, _, err = run_cli(
        "tune", "--recipe", tune, "--study", "study", "--storage", "sqlite:///old.db", "--launcher", launcher()
    )
    assert code == 0 and "resuming: 1 finished" in err, err


def test_storage_naming_a_folder_is_one_line_exit_2_and_writes_nothing(tmp_path, run_cli):
    tune = write_recipes(tmp_path, grid_recipe(["adamw"], epochs=1))
    folder = tmp_path / "store"
    folder.mkdir()
    before = listing(tmp_path)
    for storage, line in ((folder, f"--storage {folder}: is a folder"), (f"sqlite:///{folder}", "cannot open it")):
        code, _, err = run_cli(
            "tune", "--recipe", tune, "--study", tmp_path / "s", "--storage", storage, "--launcher", launcher()
        )
        assert code == 2 and line in err, err
        one_line(err)
        assert listing(tmp_path) == before and not (tmp_path / "s").exists()


def test_the_schema_race_of_a_new_database_is_retried_and_a_bad_url_is_not(tmp_path, monkeypatch):
    real, calls, races = RDBStorage, [], [2]

    def racing(url: str, **options: object) -> RDBStorage:
        calls.append(url)
        if races[0]:  # another worker created the tables or the version row first
            races[0] -= 1
            raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))
        return real(url, **options)

    monkeypatch.setattr("clipctl.tune.storage.RDBStorage", racing)
    open_storage(f"sqlite:///{tmp_path}/new.db", tmp_path)
    assert len(calls) == 3
    calls.clear()  # no race now
    with pytest.raises(UsageError, match="cannot open it"):
        open_storage(f"sqlite:///{tmp_path}/missing/x.db", tmp_path)
    assert len(calls) == 1  # a real bad URL is not retried


RACE = """
import sys, time
from pathlib import Path
from clipctl.tune.storage import open_storage
folder, start = Path(sys.argv[1]), float(sys.argv[2])
for k in range(3):
    time.sleep(max(0.0, start + k - time.time() - 0.02))
    while time.time() < start + k:
        pass
    open_storage(f"sqlite:///{folder}/race{k}.db", folder)
"""


@pytest.mark.slow
def test_workers_opening_a_new_sqlite_study_together_all_succeed(tmp_path):
    start = time.time() + 6  # every process has imported Optuna by then: they open each database together
    racers = [
        subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path), str(start)], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [(racer.wait(timeout=120), racer.stderr.read()) for racer in racers]
    assert all(code == 0 for code, _ in results), results
    for k in range(3):
        assert optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/race{k}.db") == []  # a complete schema


def test_a_refused_submit_changes_nothing_on_disk(tmp_path, run_cli, monkeypatch):
    tune = write_recipes(tmp_path, grid_recipe(["adamw"], epochs=1))
    study = tmp_path / "study"
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no sbatch on it
    before = listing(tmp_path)
    code, _, err = run_cli(
        "tune", "--recipe", tune, "--study", study, "--storage", f"sqlite:///{tmp_path}/s.db", "--submit", "slurm"
    )
    assert code == 2 and "sbatch is not on PATH" in err
    one_line(err)
    assert listing(tmp_path) == before and not study.exists()
    run_worker(str(study), str(tune))
    before = listing(study)
    monkeypatch.setattr("clipctl.tune.submit.visible_gpus", lambda: ["0"])
    for refused in (("slurm",), ("local", "--workers", "2", "--gpus-per-worker", "1"), ("pbs",)):
        code, _, err = run_cli("tune", "--recipe", tune, "--study", study, "--submit", *refused)
        assert code == 2, err
        one_line(err)
        assert listing(study) == before


@pytest.mark.slow
def test_submit_local_ends_cleanly_without_submitit_tracebacks(tmp_path):
    tune = write_recipes(tmp_path, grid_recipe(["adamw", "radam"], epochs=1))
    study = tmp_path / "study"
    done = subprocess.run(
        [sys.executable, "-m", "clipctl", "tune", "--recipe", str(tune), "--study", str(study)]
        + ["--launcher", launcher(), "--submit", "local", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 and len(done.stdout.split()) == 2, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    assert [t.status for t in Study(study).phase_state(1).trials.values()] == ["completed", "completed"]
