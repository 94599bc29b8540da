"""Tune faults: a missing dataset is the study's error (refused up front, never told to the optimizer, the
trial re-run on resume), failed trials re-run with --retry-failed, malformed journal lines, --study a file."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from helpers.output import without_warnings
from helpers.trainkit import make_tiny_shapes
from helpers.tune_fakes import HERE, grid_recipe, launcher, run_worker, write_recipes
from sqlalchemy.exc import OperationalError

from clipctl.errors import DataError
from clipctl.tune.store import Study

GP = """\
[tune]
base = "base.toml"
phase = 1
strategy = "gp"
n_trials = {n_trials}
n_initial = 2
seed = 5
[tune.fixed]
"train.epochs" = 2
[tune.space]
"optim.name" = ["adamw", "radam"]
"optim.lr" = {{ low = 1e-4, high = 1e-2, prior = "log-uniform" }}
"""


def events(study: Path) -> list[dict]:
    return Study(study).events(1) if (study / "study.toml").exists() else []


def one_line(err: str) -> None:
    err = without_warnings(err)
    assert err.count("\n") == 1 and err.startswith("clipctl: error: ") and "Traceback" not in err, err


def test_missing_data_is_refused_before_any_trial_then_the_same_command_trains(tmp_path, run_cli, monkeypatch):
    tune = write_recipes(tmp_path, grid_recipe(["adamw", "radam"]))
    ready = tmp_path / "data-ready"
    monkeypatch.setenv("FAKE_NEEDS_FILE", str(ready))
    args = ("tune", "--recipe", tune, "--study", tmp_path / "study", "--launcher", launcher())
    code, _, err = run_cli(*args)
    assert code == 3 and "preflight" in err and "dataset missing" in err and "no trial was started" in err
    assert err.splitlines()[-1].startswith("clipctl: error: ") and "Traceback" not in err
    assert not [e for e in events(tmp_path / "study") if e["event"].startswith("trial")]
    ready.write_text("")
    code, _, err = run_cli(*args)
    assert code == 0, err
    trials = Study(tmp_path / "study").state().phase(1).trials
    assert [t.status for t in trials.values()] == ["completed", "completed"]


def test_a_trial_data_error_stops_the_study_untold_and_is_re_run_on_resume(tmp_path, monkeypatch):
    tune = write_recipes(tmp_path, grid_recipe(["adamw", "radam"]))
    study = tmp_path / "study"
    ready = tmp_path / "data-ready"
    monkeypatch.setenv("FAKE_NEEDS_FILE", str(ready))  # the data disappears after the preflight
    with pytest.raises(DataError) as info:
        run_worker(str(study), str(tune))
    assert info.value.exit_code == 3 and "t001" in str(info.value) and "dataset missing" in str(info.value)
    assert "re-run" in str(info.value) and "\n" not in str(info.value)
    kinds = [e["event"] for e in events(study)]
    assert kinds == ["trial_started"]  # no result, no penalty, nothing told to the optimizer
    ready.write_text("")
    run_worker(str(study), str(tune))
    state = Study(study).state().phase(1)
    assert [(t.status, t.flagged) for t in state.trials.values()] == [("completed", False), ("completed", False)]
    assert state.trials[1].starts == 2 and not [e for e in events(study) if e["event"] == "trial_failed"]


def test_retry_failed_runs_failed_trials_again(tmp_path, run_cli, monkeypatch):
    tune = write_recipes(tmp_path, grid_recipe(["adamw", "rmsprop"]))
    study = tmp_path / "study"
    args = ("tune", "--recipe", tune, "--study", study, "--launcher", launcher())
    code, _, err = run_cli(*args)
    assert code == 0, err
    assert Study(study).state().phase(1).trials[2].status == "failed"
    monkeypatch.setenv("FAKE_RMSPROP_FIXED", "1")
    code, _, err = run_cli(*args, "--retry-failed")
    assert code == 0 and "1 failed trial(s) to run again: t002" in err, err
    state = Study(study).state().phase(1)
    assert [(t.status, t.flagged) for t in state.trials.values()] == [("completed", False), ("completed", False)]
    assert state.trials[2].starts == 2 and state.closed is not None and "replaying" not in err
    code, _, err = run_cli("tune", "--recipe", tmp_path / "other.toml", "--study", tmp_path / "new", "--retry-failed")
    assert code == 2


def test_a_foreign_optuna_trial_in_a_phase_study_is_left_out(tmp_path, run_cli):
    tune = write_recipes(tmp_path, grid_recipe(["adamw", "radam"]))
    study = tmp_path / "study"
    run_worker(str(study), str(tune))
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(Study(study).storage_label()))
    optuna.load_study(study_name="phase1", storage=storage).add_trial(optuna.trial.create_trial(value=0.99))
    code, _, err = run_cli("tune", "status", "--study", study, "--phase", "1")
    assert code == 0 and "t001" in err and "t002" in err and "0.99" not in err and "Traceback" not in err
    assert len(Study(study).phase_state(1).trials) == 2


OLD_STUDY = Path(__file__).parent / "fixtures" / "old_journal"  # written by clipctl before Optuna storage


def test_an_old_journal_study_is_migrated_once_keeping_the_file_and_goes_on(tmp_path, run_cli, monkeypatch):
    tune = write_recipes(tmp_path, grid_recipe(["adamw", "rmsprop", "radam"]))
    old = tmp_path / "old"
    shutil.copytree(OLD_STUDY, old)
    journal = (old / "journal.jsonl").read_bytes()
    code, _, err = run_cli("tune", "status", "--study", old, "--phase", "1")
    assert code == 0 and f"{old}: migrated the journal.jsonl study into {old / 'optuna-journal.log'}" in err, err
    state = Study(old).phase_state(1)
    t1, t2, t3 = (state.trials[n] for n in (1, 2, 3))
    assert (t1.status, t1.value, t1.epochs) == ("completed", 0.62, {0: 0.31, 1: 0.62})
    assert t2.status == "running" and t2.worker == "" and t2.starts == 1  # --retry-failed was asked for
    assert (t3.status, t3.value) == ("completed", 0.63) and state.closed is None
    monkeypatch.setenv("FAKE_RMSPROP_FIXED", "1")
    code, _, err = run_cli("tune", "--recipe", tune, "--study", old, "--launcher", launcher())
    assert code == 0 and "migrated" not in err and "t002 started (re-run)" in err, err
    state = Study(old).phase_state(1)
    assert [t.status for t in state.trials.values()] == ["completed"] * 3 and state.trials[2].starts == 2
    assert state.closed is not None and (old / "journal.jsonl").read_bytes() == journal
    assert "migrated_from" in (old / "study.toml").read_text()


def test_an_old_journal_replays_to_the_same_next_proposal_after_migration(tmp_path):
    gp = GP.format(n_trials=5)
    tune = write_recipes(tmp_path, gp)
    run_worker(str(tmp_path / "straight"), str(tune))
    straight = Study(tmp_path / "straight")
    old = tmp_path / "old"  # the first 3 trials as the old clipctl recorded them
    old.mkdir()
    config = (tmp_path / "straight" / "study.toml").read_text()
    (old / "study.toml").write_text(re.sub(r"version = 2\n(storage = .*\n)?", "version = 1\n", config))
    lines = [
        {k: v for k, v in e.items() if k != "ask" or v}
        for e in straight.events(1)
        if e["event"] != "phase_closed" and e["trial"] <= 3
    ]
    (old / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    worker = subprocess.run(
        [sys.executable, str(HERE), "--worker", str(old), str(tune), "1", "", "30"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert worker.returncode == 0 and "replaying" not in worker.stderr, worker.stderr
    proposed = [e["proposed"] for e in Study(old).events(1) if e["event"] == "trial_started"]
    assert proposed == [e["proposed"] for e in straight.events(1) if e["event"] == "trial_started"]


def test_an_old_study_that_never_started_a_trial_is_migrated_empty(tmp_path, run_cli):
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(OLD_STUDY / "study.toml", old / "study.toml")  # its preflight failed: no journal.jsonl yet
    code, _, err = run_cli("tune", "status", "--study", old, "--json")
    assert code == 0 and "migrated" in err, err
    assert Study(old).phase_state(1).trials == {} and "version = 2" in (old / "study.toml").read_text()


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: a refused command leaves this identical."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "line, why",
    [
        ("{not json", "line 13 is not JSON"),
        ('{"event": "trial_started", "phase": 1, "trial": 4, "params": {}}', "trial 4 starts without its point"),
    ],
)
def test_an_old_journal_that_cannot_be_replayed_is_refused_in_one_line_changing_nothing(tmp_path, run_cli, line, why):
    old = tmp_path / "old"
    shutil.copytree(OLD_STUDY, old)
    with open(old / "journal.jsonl", "a") as handle:
        handle.write(line + "\n")
    tune = write_recipes(tmp_path, grid_recipe(["adamw", "rmsprop", "radam"]))
    before = listing(old)
    for command in (("status",), ("best",), ("--recipe", tune, "--launcher", launcher())):
        code, _, err = run_cli("tune", *command, "--study", old)
        assert code == 2 and f"{old}: cannot migrate the old journal.jsonl study ({why})" in err, err
        assert "--study NEW_DIR" in err
        one_line(err)
        assert listing(old) == before  # no optuna-journal.log, study.toml as it was


def test_study_naming_a_file_is_a_usage_error(tmp_path, run_cli):
    tune = write_recipes(tmp_path, grid_recipe(["adamw"]))
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args in (("tune", "status", "--study", afile), ("tune", "--recipe", tune, "--study", afile)):
        code, _, err = run_cli(*args)
        assert code == 2 and "is a file" in err
        one_line(err)
    assert afile.read_text() == "x"


TINY_BASE = """\
[data]
train = "{train}"
image_size = 32
max_text_len = 16
num_workers = 0
persistent_workers = false
augment = false
[model]
image_model = "test_vit"
image_pretrained = false
text_pretrained = false
text_config = {{ n_layers = 1, dim = 32, hidden_dim = 64, n_heads = 2 }}
tokenizer = "wordpiece"
vocab_size = 200
embed_dim = 32
[sched]
warmup_epochs = 0
[train]
batch_size = 32
max_steps = 2
precision = "no"
device = "cpu"
[eval]
batch_size = 64
val_retrieval = "{shapes}/val.json"
val_zeroshot = "{shapes}/zeroshot_val"
test_retrieval = "{shapes}/test.json"
test_zeroshot = "{shapes}/zeroshot"
"""


@pytest.mark.slow
def test_tune_on_shapes_without_its_training_data_exits_3_then_trains_the_full_budget(tmp_path, data_root):
    shapes = make_tiny_shapes(data_root)
    train = tmp_path / "later" / "train.json"
    (tmp_path / "base.toml").write_text(TINY_BASE.format(train=train, shapes=shapes))
    (tmp_path / "tune.toml").write_text(grid_recipe(["adamw", "radam"], epochs=1))
    command = [
        sys.executable,
        "-m",
        "clipctl",
        "tune",
        "--phase",
        "1",
        "--recipe",
        str(tmp_path / "tune.toml"),
        "--study",
        str(tmp_path / "study"),
    ]
    missing = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert missing.returncode == 3 and str(train) in missing.stderr, missing.stderr[-2000:]
    assert "Traceback" not in missing.stderr
    assert not [e for e in events(tmp_path / "study") if e["event"].startswith("trial")]
    shutil.copytree(shapes, train.parent)  # the training data arrives
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = Study(tmp_path / "study").state().phase(1).trials
    assert len(trials) == 2 and all(t.status == "completed" and not t.flagged for t in trials.values())


DISK_ERRORS = [
    ("clipctl: error: {run}/state/last.pt: disk full (no space left on device); free space", "disk full"),
    ("OSError: [Errno 30] Read-only file system: '{run}/metrics.jsonl'", "Read-only file system"),
    ("clipctl: error: {run}/state: permission denied; choose a writable folder or fix its permissions", "permission"),
    ("OSError: [Errno 27] File too large", "File too large"),
]


@pytest.mark.parametrize("line, shown", DISK_ERRORS, ids=["ENOSPC", "EROFS", "EACCES", "EFBIG"])
def test_a_trial_failing_for_its_disk_stops_the_study_untold_and_is_re_run(tmp_path, run_cli, monkeypatch, line, shown):
    tune = write_recipes(tmp_path, grid_recipe(["adamw", "radam"]))
    study = tmp_path / "study"
    args = ("tune", "--recipe", tune, "--study", study, "--launcher", launcher())
    monkeypatch.setenv("FAKE_DISK_ERROR", line)
    code, _, err = run_cli(*args)
    last = err.splitlines()[-1]
    assert code == 1 and last.startswith("clipctl: error: phase 1 t001: ") and shown in last, err
    assert "the study stopped without a result for this trial" in last and "Traceback" not in err
    assert err.count("clipctl: error") == 1
    assert [e["event"] for e in events(study)] == ["trial_started"]  # not told, no penalty, t002 never started
    monkeypatch.delenv("FAKE_DISK_ERROR")  # space freed
    code, _, err = run_cli(*args)
    assert code == 0, err
    state = Study(study).phase_state(1)
    assert [(t.status, t.flagged) for t in state.trials.values()] == [("completed", False)] * 2
    assert state.trials[1].starts == 2 and not [e for e in events(study) if e["event"] == "trial_failed"]


def test_a_read_only_study_folder_stops_the_study_untold(tmp_path, run_cli, monkeypatch):
    tune = write_recipes(tmp_path, grid_recipe(["adamw", "radam"]))
    study = tmp_path / "study"
    args = ("tune", "--recipe", tune, "--study", study, "--launcher", launcher())

    def read_only(path: Path, text: str) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr("clipctl.tune.runner.atomic_write_text", read_only)  # the trial's recipe cannot be written
    code, _, err = run_cli(*args)
    last = err.splitlines()[-1]
    assert code == 1 and last == (
        f"clipctl: error: {study / 'phase1' / 't001.toml'}: read-only file system; make the file system writable, "
        "then run the same command; the study stopped"
    ), err
    assert "Traceback" not in err and [e["event"] for e in events(study)] == ["trial_started"]
    monkeypatch.undo()
    code, _, err = run_cli(*args)
    assert code == 0, err
    assert [t.status for t in Study(study).phase_state(1).trials.values()] == ["completed"] * 2


def test_a_storage_that_fails_under_the_study_stops_it_in_one_line_untold(tmp_path, run_cli, monkeypatch):
    tune = write_recipes(tmp_path, grid_recipe(["adamw", "radam"]))
    study, url = tmp_path / "study", f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ("tune", "--recipe", tune, "--study", study, "--launcher", launcher())

    def gone(*args: object, **kwargs: object) -> None:
        raise OperationalError("UPDATE trials", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr("clipctl.tune.storage.PhaseStore.tell", gone)
    code, _, err = run_cli(*args, "--storage", url)
    last = err.splitlines()[-1]
    assert code == 1 and last.startswith(f"clipctl: error: {url}: the study's storage failed (")
    assert "Traceback" not in err
    assert "server closed the connection unexpectedly" in last and err.count("clipctl: error") == 1
    assert [e["event"] for e in events(study)] == ["trial_started"]
    monkeypatch.undo()
    code, _, err = run_cli(*args)
    assert code == 0, err
    state = Study(study).phase_state(1)
    assert [(t.status, t.starts) for t in state.trials.values()] == [("completed", 2), ("completed", 1)]
