"""The study's journal file under what a file system does to it: a torn last line is ended by the next append
and skipped with one warning (nothing glued to it), garbage and foreign lines are skipped, an operation that
does not replay stops the study in one line naming `clipctl tune repair`, the repair keeps the original, and a
journal cut at every byte offset of its last operation resumes to exactly the uninterrupted study."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers.output import without_warnings
from helpers.tune_fakes import HERE, InProcessRunner, grid_recipe, launcher, run_worker, storage_url, write_recipes

from clipctl.tune.phases import open_phase
from clipctl.tune.recipe import load_tune_recipe
from clipctl.tune.runner import PhaseWorker
from clipctl.tune.store import Study


def one_line(err: str) -> None:
    err = without_warnings(err)
    assert err.count("\n") == 1 and err.startswith("clipctl: error: ") and "Traceback" not in err, err


def journal_of(study: Path) -> Path:
    return study / "optuna-journal.log"


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: a command that changes nothing leaves this identical."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def skipped(err: str, journal: Path) -> list[int]:
    """The line numbers the warnings say were skipped."""
    prefix = f"warning: {journal}: line "
    return [int(line[len(prefix) :].split()[0]) for line in err.splitlines() if line.startswith(prefix)]


@pytest.fixture
def finished_study(tmp_path: Path) -> tuple[Path, Path]:
    """A closed phase 1 of two completed trials in the study's journal file; returns (study, tune recipe)."""
    tune = write_recipes(tmp_path, grid_recipe(["adamw", "radam"]))
    run_worker(str(tmp_path / "study"), str(tune))
    return tmp_path / "study", tune


def test_a_torn_last_line_is_ended_by_the_next_append_and_skipped_with_one_warning(finished_study, run_cli):
    study, tune = finished_study
    journal = journal_of(study)
    torn = b'{"op_code":8,"worker_id":"gone","trial_id":0,"user_at'  # a worker killed mid-append
    with open(journal, "ab") as handle:
        handle.write(torn)
    line = journal.read_bytes().count(b"\n") + 1
    code, _, err = run_cli("tune", "status", "--study", study)  # only reads: the tail may be a write in flight
    assert code == 0 and "Traceback" not in err and skipped(err, journal) == [], err
    code, _, err = run_cli("tune", "--recipe", tune, "--study", study, "--launcher", launcher())  # appends
    assert code == 0 and "Traceback" not in err, err
    lines = journal.read_bytes().splitlines(keepends=True)
    assert lines[line - 1] == torn + b"\n" and len(lines) > line  # ended; the new operations on lines of their own
    assert all(json.loads(raw)["op_code"] in (3, 8) for raw in lines[line:])
    assert skipped(err, journal) == [line]
    for command in ("status", "best"):
        code, _, err = run_cli("tune", command, "--study", study)
        assert code == 0 and "Traceback" not in err and skipped(err, journal) == [line], err
    signed_off = [v for k, v in Study(study).phase_store(1).attrs().items() if k.startswith("clipctl:worker:")]
    assert len(signed_off) == 2 and all(v["stopped"] for v in signed_off)  # the resumed worker's sign-off counts
    assert [t.status for t in Study(study).phase_state(1).trials.values()] == ["completed", "completed"]


FOREIGN = [
    b"garbage\n",
    b"\n",
    b"[1, 2]\n",
    b'{"a": 1}\n',
    b'{"op_code": 99, "worker_id": "w"}\n',
    b'{"op_code": "4", "worker_id": "w"}\n',
    b'{"op_code": 4}\n',
    b"\xff\xfe\x00\n",
    b"[" * 100_000 + b"\n",
]


def test_garbage_and_foreign_lines_are_skipped_with_one_warning_each(finished_study, run_cli):
    study, _ = finished_study
    journal = journal_of(study)
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:3] + FOREIGN + lines[3:]))
    expected = list(range(4, 4 + len(FOREIGN)))
    for command in (("status", "--phase", "1"), ("best",), ("status", "--json")):
        code, out, err = run_cli("tune", *command, "--study", study)
        assert code == 0 and "Traceback" not in err and skipped(err, journal) == expected, err
    assert json.loads(out)["phases"][0]["completed"] == 2
    assert [t.status for t in Study(study).phase_state(1).trials.values()] == ["completed", "completed"]


def test_an_operation_that_does_not_replay_names_the_repair_which_keeps_the_original(finished_study, run_cli):
    study, _ = finished_study
    journal = journal_of(study)
    lines = journal.read_bytes().splitlines(keepends=True)
    bad = b'{"op_code":4,"worker_id":"w","study_id":0}\n'  # a trial without its start time
    broken = b"".join(lines[:3] + [b"garbage\n"] + lines[3:6] + [bad] + lines[6:])
    journal.write_bytes(broken)
    before = listing(study)
    for command in ("status", "best"):
        code, _, err = run_cli("tune", command, "--study", study)
        assert code == 1 and "line 8 is an Optuna operation that does not replay (KeyError" in err, err
        assert f"run `clipctl tune repair --study {study}`" in err
        one_line(err)
        assert listing(study) == before
    code, _, err = run_cli("tune", "repair", "--study", study)
    assert code == 0 and "dropped 2 line(s) that do not replay (line 4, 8)" in err, err
    (backup,) = study.glob("optuna-journal.log.*.broken")
    assert backup.read_bytes() == broken and journal.read_bytes() == b"".join(lines)
    assert f"the original is kept as {backup}" in err
    code, _, err = run_cli("tune", "status", "--study", study)
    assert code == 0 and not err.count("warning:"), err
    repaired = listing(study)
    code, _, err = run_cli("tune", "repair", "--study", study)
    assert code == 0 and "every line replays" in err and "nothing to repair" in err
    assert listing(study) == repaired


def test_repair_refuses_while_a_worker_is_alive_and_changes_nothing(finished_study, run_cli):
    study, _ = finished_study
    Study(study).phase_store(1).beat("w-alive", grace_s=600)  # a worker that is still beating
    with open(journal_of(study), "ab") as handle:
        handle.write(b"garbage\n")
    before = listing(study)
    code, _, err = run_cli("tune", "repair", "--study", study)
    assert code == 4 and "worker w-alive is still working on this study" in err
    one_line(err)
    assert listing(study) == before


def test_repair_of_a_database_study_is_a_usage_error(tmp_path, run_cli):
    tune = write_recipes(tmp_path, grid_recipe(["adamw"], epochs=1))
    run_worker(str(tmp_path / "study"), str(tune), storage=storage_url("sqlite", tmp_path))
    before = listing(tmp_path)
    code, _, err = run_cli("tune", "repair", "--study", tmp_path / "study")
    assert code == 2 and "`clipctl tune repair` mends journal files" in err
    one_line(err)
    assert listing(tmp_path) == before


def test_a_storage_file_that_is_not_a_journal_is_refused_for_a_new_study(tmp_path, run_cli):
    tune = write_recipes(tmp_path, grid_recipe(["adamw"], epochs=1))
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\nnot a journal\n")
    before = listing(tmp_path)
    code, _, err = run_cli(
        "tune", "--recipe", tune, "--study", tmp_path / "s", "--storage", notes, "--launcher", launcher()
    )
    assert code == 2 and f"--storage {notes}: not an Optuna journal file" in err
    one_line(err)
    assert listing(tmp_path) == before and not (tmp_path / "s").exists()


def _limit_file_size(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: a write past it is EFBIG


@pytest.mark.slow
def test_an_append_cut_short_by_the_file_size_limit_stops_the_study_and_the_next_run_completes(tmp_path):
    tune = write_recipes(tmp_path, grid_recipe(["adamw", "radam", "adam"]))
    study = tmp_path / "study"
    worker = [sys.executable, str(HERE), "--worker", str(study), str(tune), "1", "", "0.25"]  # dead 1 s after
    limited = subprocess.run(
        worker, capture_output=True, text=True, timeout=300, preexec_fn=lambda: _limit_file_size(4000)
    )
    error = limited.stderr.splitlines()[-1]
    expected = f"clipctl: error: {journal_of(study)}: file too large (over the file-size limit"
    assert limited.returncode == 1 and error.startswith(expected)
    assert "the study stopped" in error and "Traceback" not in limited.stderr, limited.stderr
    journal = journal_of(study).read_bytes()
    assert len(journal) == 4000 and not journal.endswith(b"\n")  # the operation being appended is torn
    torn_line = journal.count(b"\n") + 1
    command = [sys.executable, "-m", "clipctl", "tune", "--recipe", str(tune), "--study", str(study)]
    done = subprocess.run([*command, "--launcher", launcher()], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert skipped(done.stderr, journal_of(study)) == [torn_line]
    state = Study(study).phase_state(1)
    assert [(t.status, t.flagged) for t in state.trials.values()] == [("completed", False)] * 3
    assert state.closed is not None and not [e for e in Study(study).events(1) if e["event"] == "trial_failed"]


# ----------------------------------------------------------------------------- the fault test of the store

GP = """\
[tune]
base = "base.toml"
phase = 1
strategy = "gp"
n_trials = 3
n_initial = 2
initial_point_generator = "random"
seed = 3
[tune.fixed]
"train.epochs" = 2
[tune.space]
"optim.name" = ["adamw", "radam"]
"optim.lr" = { low = 1e-4, high = 1e-2, prior = "log-uniform" }
"""


def _work(study_dir: Path, tune: Path, heartbeat_s: float) -> None:
    """One worker to the phase's end, its trials trained in this process."""
    recipe, path = load_tune_recipe(str(tune))
    study = Study(study_dir, heartbeat_s=heartbeat_s)
    PhaseWorker(study, open_phase(study, recipe, path), InProcessRunner(), log=lambda line: None).run()


def _outcome(study_dir: Path) -> list[tuple]:
    """Per trial: its point as proposed, then each told result (status, value): one per trial, or counted twice."""
    groups: dict[int, list] = {}
    for event in Study(study_dir).events(1):
        if event["event"] == "trial_started" and not event.get("rerun"):
            groups[event["trial"]] = [event["proposed"]]
        elif event["event"].startswith("trial_") and event["event"] not in ("trial_started", "trial_retried"):
            groups[event["trial"]].append((event["event"], event["value"]))
    return [(number, *group) for number, group in sorted(groups.items())]


def _append_and_replay(study_dir: Path) -> tuple[dict[int, str], bool]:
    """What the next worker does first: append (its heartbeat), then read the study back afresh. Returns the
    trials' statuses and whether the appended operation replayed (it would be lost if glued to a torn line)."""
    Study(study_dir).phase_store(1).beat("next-worker", grace_s=1.0)
    fresh = Study(study_dir)
    statuses = {number: t.status for number, t in fresh.phase_state(1).trials.items()}
    return statuses, "clipctl:worker:next-worker" in fresh.phase_store(1).attrs()


@pytest.mark.slow
def test_a_journal_cut_at_every_byte_of_its_last_operation_resumes_to_the_uninterrupted_study(
    tmp_path, monkeypatch, capsys
):
    """The worker is killed while it appends the state of trial 2's result (the operation that makes a result
    count). Every cut replays; the appended operation is never lost; trial 2 counts once, as completed if the
    whole operation is there (its newline is added by the next append) and else re-run; resumed to the end,
    the study proposes and records exactly what the uninterrupted one did. A cut inside the line is a torn line
    (no prefix of a JSON object is JSON), so the full resume runs at both ends of that range and its middle."""
    monkeypatch.setattr("clipctl.tune.runner.POLL_MIN_S", 0.001)  # trials finish as they start: no need to wait
    tune = write_recipes(tmp_path, GP)
    _work(tmp_path / "straight", tune, heartbeat_s=0.05)  # a killed worker is dead 0.2 s after its last beat
    straight = _outcome(tmp_path / "straight")
    assert [t[0] for t in straight] == [1, 2, 3] and all(t[2][0] == "trial_completed" for t in straight)
    lines = journal_of(tmp_path / "straight").read_bytes().splitlines(keepends=True)
    tell = next(k for k, raw in enumerate(lines) if _is_completion(raw, trial_id=1))
    head, last = b"".join(lines[:tell]), lines[tell]
    template = tmp_path / "template"
    shutil.copytree(tmp_path / "straight", template, ignore=shutil.ignore_patterns("optuna-journal.log*"))
    whole = (len(last) - 1, len(last))  # the operation without or with its newline
    resumed = {0, 1, 2, len(last) // 2, len(last) - 3, *whole}
    # the straight worker must be dead (0.2 s after its last beat) before a cut is resumed: else its "running"
    # trial 2 looks alive, trial 3 is proposed beside it without its result, and the proposal differs
    time.sleep(0.5)
    capsys.readouterr()
    for cut in range(len(last) + 1):
        study = tmp_path / f"cut{cut}"
        shutil.copytree(template, study)
        journal_of(study).write_bytes(head + last[:cut])
        statuses, appended = _append_and_replay(study)
        assert appended and statuses == {1: "completed", 2: "completed" if cut in whole else "running"}, cut
        torn = 0 < cut < len(last) - 1  # the appending worker and the fresh reader warn once each
        assert skipped(capsys.readouterr().err, journal_of(study)) == ([tell + 1] * 2 if torn else []), cut
        if cut in resumed:
            _work(study, tune, heartbeat_s=30)
            err = capsys.readouterr().err
            assert _outcome(study) == straight, cut  # the same points proposed, each trial told once, same values
            assert Study(study).phase_state(1).trials[2].starts == (1 if cut in whole else 2), cut
            assert "replaying" not in err and "Traceback" not in err, err
        shutil.rmtree(study)


def _is_completion(raw: bytes, trial_id: int) -> bool:
    op = json.loads(raw)
    return op["op_code"] == 6 and op["trial_id"] == trial_id and op["state"] == optuna.trial.TrialState.COMPLETE


def test_opening_and_reading_a_new_study_creates_nothing(tmp_path):
    assert Study(tmp_path / "new").open().state().phases == {}
    assert os.listdir(tmp_path) == []
