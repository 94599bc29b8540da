"""`clipctl tune --dry-run` cost estimates and the command's usage errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from helpers.tune_fakes import grid_recipe, launcher, write_recipes

from clipctl.tune.store import Study

GRID = grid_recipe(["adamw", "radam"], epochs=3, lrs=(1e-3, 2e-3), prune=True)


def test_dry_run_prints_trials_epochs_and_measured_step_time(tmp_path, run_cli):
    tune = write_recipes(tmp_path, GRID)
    code, _, err = run_cli(
        "tune", "--dry-run", "--recipe", tune, "--study", tmp_path / "study", "--launcher", launcher()
    )
    assert code == 0, err
    row = next(line for line in err.splitlines() if line.strip().startswith("│") and "0.250" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:6] == ["1", "4", "3", "40", "0.250", "2:00"]  # 4 trials x 3 epochs x 40 steps x 0.25 s
    assert not (tmp_path / "study").exists()  # nothing started, nothing written


def test_dry_run_covers_every_phase_and_bounds_an_unstarted_hand_over(tmp_path, run_cli):
    code, _, err = run_cli("tune", "--dry-run", "--study", tmp_path / "study", "--launcher", launcher())
    assert code == 0, err
    rows = [line for line in err.splitlines() if line.strip().startswith("│")]
    assert [r.strip("│ ").split("│")[0].strip() for r in rows[:3]] == ["1", "2", "3"]
    assert "upper bound" in err and "all phases: about" in err


def test_dry_run_without_a_step_time_explains_why(tmp_path, run_cli):
    tune = write_recipes(tmp_path, GRID)
    code, _, err = run_cli(
        "tune", "--dry-run", "--recipe", tune, "--study", tmp_path / "study", "--launcher", f"{sys.executable} -c pass"
    )
    assert code == 0, err
    assert "gave no step time (exit 0: no output)" in err and "?" in err


def test_usage_errors_exit_2(tmp_path, run_cli):
    tune = write_recipes(tmp_path, GRID)
    code, _, err = run_cli("tune", "--recipe", tune, "--phase", "2", "--study", tmp_path / "s")
    assert code == 2 and "tune.phase = 1 but --phase 2" in err
    code, _, err = run_cli("tune", "--recipe", tune, "--study", tmp_path / "s", "--launcher", "no-such-launcher --x")
    assert code == 2 and "not found on PATH" in err
    code, _, err = run_cli("tune", "--phase", "4", "--study", tmp_path / "s")
    assert code == 2 and "--phase 4: expected 1, 2 or 3" in err  # the phases are recipes/tune/phaseN.toml
    code, _, err = run_cli("tune", "status", "--study", tmp_path / "nothing")
    assert code == 2 and "no study here" in err
    assert not (tmp_path / "s").exists()


def test_bare_tune_prints_help_like_data_and_starts_nothing(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_code, data_help, _ = run_cli("data")
    code, out, err = run_cli("tune")
    assert (code, data_code) == (2, 2)  # the same as `clipctl data` and `clipctl recipes` without a subcommand
    assert "Usage: clipctl tune" in out and "--phase" in out and "Usage: clipctl data" in data_help
    assert err == "" and list(tmp_path.iterdir()) == []  # no runs/tune, no trial
    code, out, err = run_cli("tune", "--parallel", "2")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "tune: which phase? add --phase 1|2|3" in err and "--recipe FILE" in err
    assert list(tmp_path.iterdir()) == []


def test_a_running_trial_says_its_epoch_and_progress_on_screen(tmp_path, run_cli, monkeypatch):
    tune = write_recipes(tmp_path, grid_recipe(["adamw"], epochs=3))
    monkeypatch.setenv("FAKE_EPOCH_SLEEP", "0.6")
    args = ("tune", "--recipe", tune, "--study", tmp_path / "s", "--launcher", launcher(), "--progress-every", "0.2")
    code, _, err = run_cli(*args)
    assert code == 0, err
    metrics = (tmp_path / "s" / "phase1" / "t001" / "metrics.jsonl").read_text().splitlines()
    for line in map(json.loads, metrics):  # each epoch's objective as it arrives, numbered as in metrics.jsonl
        assert f"phase 1 t001 epoch {line['epoch']}/2: val/objective = {100 * line['val/objective']:.2f}%" in err
    periodic = [line for line in err.splitlines() if line.startswith("phase 1 t001: ")]
    assert periodic and all("; running 0:0" in line for line in periodic)  # between epochs, where it is
    assert any(
        re.match(r"phase 1 t001: epoch [01]/2, update \d+, val/objective \d+\.\d\d% at epoch [01]; ", p)
        for p in periodic
    )
    code, _, err = run_cli(*args[:-2], "--progress-every", "0", "--study", tmp_path / "quiet")
    assert code == 0 and not [line for line in err.splitlines() if line.startswith("phase 1 t001: ")]


def test_sigterm_stops_the_running_trial_and_the_same_command_resumes_it(tmp_path):
    tune = write_recipes(tmp_path, GRID)
    study = tmp_path / "study"
    command = [
        sys.executable,
        "-m",
        "clipctl",
        "tune",
        "--recipe",
        str(tune),
        "--study",
        str(study),
        "--launcher",
        launcher(),
    ]
    tuner = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "FAKE_EPOCH_SLEEP": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        (study / "study.toml").exists() and len(Study(study).phase_state(1).trials) >= 2
    ):
        time.sleep(0.1)
    tuner.send_signal(signal.SIGTERM)
    _, err = tuner.communicate(timeout=180)
    assert tuner.returncode == 130, err
    assert "tune interrupted: 1 running trial(s) stopped" in err
    assert not (study / "phase1" / "t002" / "summary.json").exists()  # the trial was stopped, not finished

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "t002 started (re-run)" in resumed.stderr
    state = Study(study).state().phase(1)
    assert [t.status for t in state.trials.values()] == ["completed"] * 4 and state.trials[2].starts == 2
