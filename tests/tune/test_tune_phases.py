"""Phase hand-over and analysis on one fake study (phase 1 random search, phase 2 grid over its top combos):
`tune status | best --export | importance | plot`, the phase 1 -> 2 rank correlation, phase 3's start,
and a live study refusing an edited space."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from helpers.tune_fakes import launcher, storage_url, write_recipes

from clipctl.recipe import load_recipe
from clipctl.tune.phases import build_plan, top_combos
from clipctl.tune.recipe import load_tune_recipe
from clipctl.tune.store import Study

PHASE1 = """\
[tune]
base = "base.toml"
phase = 1
strategy = "random"
n_trials = 12
n_initial = 12
seed = 1
[tune.fixed]
"train.epochs" = 2
"data.train_fraction" = 0.5
[tune.space]
"loss.name" = ["sogclr", "isogclr_new"]
"optim.name" = ["adam", "adamw", "radam"]
"optim.lr" = { low = 1e-4, high = 1e-2, prior = "log-uniform" }
"optim.weight_decay" = { low = 1e-6, high = 1e-1, prior = "log-uniform" }
"""
PHASE2 = """\
[tune]
base = "base.toml"
phase = 2
strategy = "grid"
from_phase = 1
top_k = 3
n_trials = 20
[tune.fixed]
"train.epochs" = 3
[tune.space]
"optim.lr" = [1e-3, 2e-3]
"""
PHASE3 = """\
[tune]
base = "base.toml"
phase = 3
strategy = "gp"
from_phase = 2
n_trials = 4
[tune.fixed]
"train.epochs" = 4
[tune.space]
"optim.weight_decay" = { low = 1e-6, high = 1e-2, prior = "log-uniform" }
"loss.rho_I" = { low = 1.0, high = 10.0 }
"""


def cli(*args: object) -> tuple[int, str, str]:
    """Run the CLI in-process outside a test function's capsys (module-scoped fixture)."""
    from clipctl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module", params=["journal", "sqlite"])
def studied(tmp_path_factory, request) -> dict:
    """Phases 1 and 2 run through the CLI, on the default journal file and on SQLite."""
    folder = tmp_path_factory.mktemp("tune")
    paths = {n: write_recipes(folder, text, f"phase{n}.toml") for n, text in ((1, PHASE1), (2, PHASE2), (3, PHASE3))}
    study = folder / "study"
    storage = storage_url(request.param, folder)
    outputs = {}
    for phase in (1, 2):
        code, _, err = cli(
            "tune",
            "--recipe",
            paths[phase],
            "--study",
            study,
            "--launcher",
            launcher(),
            *(["--storage", storage] if storage else []),
        )
        assert code == 0, err
        outputs[phase] = err
    return {"folder": folder, "study": study, "recipes": paths, "output": outputs}


def test_phase2_grid_crosses_phase1_top_combinations(studied):
    state = Study(studied["study"]).state()
    top3 = {(loss, opt) for loss, opt, _ in top_combos(state.phase(1), 3)}
    phase1_best = {}
    for t in state.phase(1).measured():  # recomputed here: best objective per (loss, optimizer)
        phase1_best[(t.loss, t.optimizer)] = max(t.value, phase1_best.get((t.loss, t.optimizer), -1.0))
    assert top3 == set(sorted(phase1_best, key=phase1_best.get, reverse=True)[:3])
    trials = state.phase(2).trials.values()
    assert len(trials) == 6 and state.phase(2).closed is not None
    assert {(t.loss, t.optimizer) for t in trials} == top3
    assert sorted((t.loss, t.optimizer, t.params["optim.lr"]) for t in trials) == sorted(
        (loss, opt, lr) for loss, opt in top3 for lr in (1e-3, 2e-3)
    )


def test_phase2_reports_rank_correlation_with_phase1(studied):
    assert "phase 1 -> phase 2 Spearman rank correlation over 3 (loss, optimizer) configs" in studied["output"][2]


def test_status_lists_phases_and_lineage(studied):
    code, out, err = cli("tune", "status", "--study", studied["study"], "--json")
    assert code == 0, err
    data = json.loads(out)
    phases = {p["phase"]: p for p in data["phases"]}
    assert phases[1]["completed"] == 12 and phases[1]["closed"] and phases[2]["planned"] == 6
    assert phases[2]["lineage"].startswith("top-3 of phase 1")
    assert data["correlation_1_2"]["n"] == 3


def test_screens_show_percent_and_json_keeps_fractions(studied):
    code, out, err = cli("tune", "status", "--study", studied["study"], "--phase", "1", "--json")
    assert code == 0, err
    trials = {f"t{t['trial']:03d}": t["value"] for t in json.loads(out)["phases"][0]["trials"]}
    assert all(0 < v < 1 for v in trials.values())  # the fake objective is a fraction, as recalls are
    for name, value in trials.items():  # each trial's line on the run's screen, in percent
        assert f"phase 1 {name} completed: val/objective = {100 * value:.2f}%" in studied["output"][1]
    code, out, err = cli("tune", "status", "--study", studied["study"], "--phase", "1")
    assert code == 0 and out == ""
    for value in trials.values():
        assert f"{100 * value:.2f}%" in err and f"{value:.4g}" not in err
    code, out, err = cli("tune", "best", "--study", studied["study"], "--json")
    best = json.loads(out)["value"]
    assert code == 0 and 0 < best < 1
    code, _, err = cli("tune", "best", "--study", studied["study"])
    assert code == 0 and f"{100 * best:.2f}%" in err and f"{best:.4f}" not in err


def test_phase3_starts_from_phase2_best(studied):
    state = Study(studied["study"]).state()
    best = state.phase(2).best()
    tune, path = load_tune_recipe(studied["recipes"][3])
    plan = build_plan(tune, path, state)
    assert plan.handover["trial"] == best.trial and plan.fixed["optim.name"] == best.optimizer
    recipe = plan.trial_recipe({"optim.weight_decay": 1e-4}, "t001", "runs")
    assert (recipe.loss.name, recipe.optim.name, recipe.optim.lr) == (
        best.loss,
        best.optimizer,
        best.params["optim.lr"],
    )
    assert recipe.train.epochs == 4
    if best.loss == "sogclr":  # rho_I has no effect on sogclr: left out of the search, with a note
        assert plan.space.names == ["optim.weight_decay"] and any("loss.rho_I" in n for n in plan.notes)


def test_best_export_writes_a_valid_recipe(studied, tmp_path):
    target = tmp_path / "best.toml"
    code, out, err = cli("tune", "best", "--study", studied["study"], "--export", target, "--json")
    assert code == 0, err
    best = json.loads(out)
    recipe = load_recipe(target)
    assert best["phase"] == 2 and recipe.optim.name == best["optimizer"] and recipe.loss.name == best["loss"]
    assert recipe.optim.lr == best["params"]["optim.lr"] and recipe.train.epochs == 3
    code, _, err = cli("tune", "best", "--study", studied["study"], "--export", target)
    assert code == 2 and "already exists" in err


def test_best_export_is_full_training_unless_as_trial(studied, tmp_path):
    full, trial = tmp_path / "full.toml", tmp_path / "trial.toml"
    code, out, err = cli("tune", "best", "--study", studied["study"], "--phase", "1", "--export", full, "--json")
    assert code == 0, err
    best = json.loads(out)
    code, _, err = cli("tune", "best", "--study", studied["study"], "--phase", "1", "--export", trial, "--as-trial")
    assert code == 0, err
    full_recipe, trial_recipe = load_recipe(full), load_recipe(trial)
    # phase 1 trains 2 epochs on half the data; the base recipe trains 3 epochs on all of it
    assert (trial_recipe.train.epochs, trial_recipe.data.train_fraction) == (2, 0.5)
    assert (full_recipe.train.epochs, full_recipe.data.train_fraction) == (3, 1.0)
    for recipe in (full_recipe, trial_recipe):  # the tuned values are the same in both
        assert (recipe.optim.name, recipe.loss.name) == (best["optimizer"], best["loss"])
        assert recipe.optim.lr == best["params"]["optim.lr"]
        assert recipe.optim.weight_decay == best["params"]["optim.weight_decay"]
    text = full.read_text()
    assert "reset to the base recipe's values" in text
    assert "#   train.epochs = 3 (the trial: 2)" in text and "#   data.train_fraction = 1.0 (the trial: 0.5)" in text
    assert "--as-trial" in trial.read_text() and "reset to the base" not in trial.read_text()
    code, _, err = cli("tune", "best", "--study", studied["study"], "--as-trial")
    assert code == 2 and "--as-trial goes with --export FILE" in err


def test_importance_ranks_the_parameter_that_matters_first(studied):
    code, out, err = cli("tune", "importance", "--study", studied["study"], "--phase", "1", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert rows[0]["parameter"] == "optim.lr"  # the fake objective is driven by log10(lr)
    assert {r["parameter"] for r in rows} == {"loss.name", "optim.name", "optim.lr", "optim.weight_decay"}
    assert abs(sum(r["importance"] for r in rows) - 1.0) < 1e-9


def test_plot_writes_non_empty_pngs(studied, tmp_path):
    code, _, err = cli("tune", "plot", "--study", studied["study"], "--out", tmp_path / "plots")
    assert code == 0, err
    names = {p.name for p in (tmp_path / "plots").iterdir()}
    for phase in (1, 2):
        for kind in ("objective_by_optimizer", "objective_by_loss", "progression", "parameters"):
            assert f"phase{phase}_{kind}.png" in names
    assert "phase1_importance.png" in names
    for path in (tmp_path / "plots").iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_plots_show_the_objective_as_measured_in_percent_higher_is_better(studied, tmp_path, monkeypatch):
    from clipctl.tune import plots
    from clipctl.tune.phases import load_plan

    figures = {}
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.setdefault(path.name, figure) and path)
    store = Study(studied["study"])
    state = store.state().phase(1)
    plots.phase_plots(load_plan(store, 1), state, tmp_path)
    values = sorted(100 * t.value for t in state.finished())
    best = state.best()
    (step,) = figures["phase1_progression.png"].axes[0].get_lines()
    assert max(step.get_ydata()) == pytest.approx(100 * best.value) and min(values) > 0  # not -objective
    panels = [ax for ax in figures["phase1_parameters.png"].axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["loss.name", "optim.name", "optim.lr", "optim.weight_decay"]
    for ax in panels:
        ys = sorted(y for c in ax.collections for y in c.get_offsets()[:, 1])
        assert ys == pytest.approx(sorted(values + [100 * best.value]))  # every trial, and the best again as a star
    assert panels[2].get_xscale() == "log"  # optim.lr is log-uniform
    for name in ("phase1_progression.png", "phase1_objective_by_loss.png", "phase1_parameters.png"):
        assert figures[name].axes[0].get_ylabel() == "val/objective (%, higher is better)"
    assert not [name for name in figures if "convergence" in name]  # skopt's figures are gone


def test_editing_a_live_study_space_exits_2(studied, tmp_path):
    text = PHASE1.replace("high = 1e-2", "high = 5e-2")
    edited = write_recipes(tmp_path, text, "phase1.toml")
    config = Path(studied["study"]) / "study.toml"
    before = (config.read_text(), Study(studied["study"]).events(1))
    code, _, err = cli("tune", "--recipe", edited, "--study", studied["study"], "--launcher", launcher())
    assert code == 2
    assert "tune.space.optim.lr.high" in err and "live study" in err and "--study" in err
    assert (config.read_text(), Study(studied["study"]).events(1)) == before


def test_a_phase_before_its_hand_over_exits_2(studied, tmp_path):
    code, _, err = cli("tune", "--recipe", studied["recipes"][2], "--study", tmp_path / "empty")
    assert code == 2 and "run `clipctl tune --phase 1` first" in err
