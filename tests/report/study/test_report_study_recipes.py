"""The studies' recipes (recipes/study/, recipes/study2/, recipes/study3/) and the make targets that run them
through `clipctl study` (Makefile: study, study2, study3)."""

from __future__ import annotations

import math
import re
import subprocess

import pytest
from helpers.paths import REPO_ROOT

from clipctl.recipe import builtin_recipe_names, load_recipe
from clipctl.report.compare import flatten

STUDY = [n for n in builtin_recipe_names() if re.fullmatch(r"study/\w+_b\d+", n)]


def test_four_losses_at_two_batch_sizes():
    recipes = {name: load_recipe(name) for name in STUDY}
    cells = {(r.loss.name, r.train.batch_size) for r in recipes.values()}
    assert cells == {
        (loss, batch) for loss in ("clip", "sogclr", "isogclr_new", "isogclr_new_v2") for batch in (32, 256)
    }
    for name, recipe in recipes.items():
        assert name == f"study/{recipe.loss.name}_b{recipe.train.batch_size}"


def test_recipes_differ_only_in_loss_and_batch_and_see_the_same_samples():
    flat = {name: flatten(load_recipe(name).model_dump()) for name in STUDY}
    reference = flat[STUDY[0]]
    for name, values in flat.items():
        differs = {k for k in set(values) | set(reference) if values.get(k) != reference.get(k)}
        assert differs <= {"run.name", "train.batch_size", "optim.lr"} | {
            k for k in differs if k.startswith("loss.")
        }, name
        assert values["optim.lr"] == pytest.approx(1e-3 * math.sqrt(values["train.batch_size"] / 32), rel=1e-3), name
        budget = values["train.epochs"] * values["data.shapes_train_size"] * values["data.train_fraction"]
        assert budget == 3 * 8000 and values["train.max_steps"] == 0, name
        fixed_temperature = values["loss.name"] in ("clip", "sogclr")
        assert values["loss.temperature" if fixed_temperature else "loss.tau_init"] == 0.05, name


def test_make_study_runs_every_recipe_and_seed_then_compares():
    plan = subprocess.run(
        ["make", "-n", "study", "STAMP=Makefile"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "clipctl data fetch shapes --train-size 8000" in plan
    assert "run.seed=$1" in plan and "--resume restart" in plan and "xargs -P 2" in plan
    assert "compare runs/study --markdown" in plan and "compare runs/study --json" in plan
    assert "clipctl study paired bench/results/study/compare.json" in plan
    assert "clipctl study by-batch bench/results/study/compare.json" in plan
    assert "clipctl study diagnostics runs/study bench/results/study" in plan
    assert "bench/_" not in plan  # the study tools are the package's
    listing = subprocess.run(
        ["bash", "-c", "for recipe in recipes/study/*_b*.toml; do echo $recipe; done"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sorted(f"study/{p.split('/')[-1][:-5]}" for p in listing) == sorted(STUDY)


STUDY2_A = [n for n in builtin_recipe_names() if re.fullmatch(r"study2/a/\w+_b\d+", n)]
STUDY2_B = [n for n in builtin_recipe_names() if re.fullmatch(r"study2/b/\w+_b\d+", n)]


def test_study2_a_long_horizon_cells():
    recipes = {name: load_recipe(name) for name in STUDY2_A}
    assert {(name.split("/")[-1].rsplit("_b", 1)[0], r.train.batch_size) for name, r in recipes.items()} == {
        (loss, batch)
        for loss in ("clip", "sogclr_g1", "sogclr_g08", "sogclr_cos", "isogclr_new_rho2", "isogclr_new_v2")
        for batch in (16, 128)
    }
    for name, r in recipes.items():
        assert r.train.epochs == 20 and r.data.shapes_train_size * r.data.train_fraction == 2000, name
        assert r.optim.lr == pytest.approx(1e-3 * math.sqrt(r.train.batch_size / 32), rel=1e-2), name
    by_name = {name.split("/")[-1]: r.loss for name, r in recipes.items()}
    assert by_name["sogclr_g1_b16"].gamma == 1.0 and by_name["sogclr_cos_b16"].gamma_schedule == "cosine"
    for batch in (16, 128):  # ρ below log(B−1): the temperatures can rise as well as fall
        assert by_name[f"isogclr_new_rho2_b{batch}"].rho_I < math.log(batch - 1)


def test_study2_b_locked_pretrained_like_towers():
    recipes = {name: load_recipe(name) for name in STUDY2_B}
    cells = {(r.model.init_from, r.loss.name, r.train.batch_size) for r in recipes.values()}
    assert cells == {
        (f"runs/study/{source}_b32-seed0/ckpt.pt", loss, batch)
        for source in ("clip", "sogclr")
        for loss in ("clip", "sogclr")
        for batch in (8, 32, 128, 1024)
    }
    for name, r in recipes.items():
        assert (
            r.model.lock_image and r.model.lock_text and r.model.cache_locked_features and not r.model.init_projections
        )
        assert r.train.epochs == 50 and r.data.shapes_train_size == 8000, name


def test_make_study2_chooses_lr_on_validation_then_trains_seeds():
    plan = subprocess.run(
        ["make", "-n", "study2", "STAMP=Makefile"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "clipctl study run recipes/study2/$part --key optim.lr --factors 0.5,1,2" in plan
    assert '--seeds "0 1 2"' in plan and "runs/study/clip_b32-seed0/ckpt.pt" in plan
    assert "--grid-out runs/study2/$part-grid --out runs/study2/$part" in plan and "bench/results/study2/$part" in plan


def _make_study2(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """`make study2` with stand-ins for clipctl and python that only record their calls, and no first study."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for tool in ("clipctl", "python"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n')
        (bin_dir / tool).chmod(0o755)
    result = subprocess.run(
        ["make", "study2", "STAMP=Makefile", f"BIN={bin_dir}", f"STUDY_OUT={tmp_path / 'no-study'}", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    return result, calls.read_text() if calls.exists() else ""


def test_make_study2_part_a_needs_no_first_study(tmp_path):
    result, calls = _make_study2(tmp_path, "STUDY2_PARTS=a", f"STUDY2_OUT={tmp_path / 'out'}")
    assert result.returncode == 0, result.stdout + result.stderr
    studies = [line for line in calls.splitlines() if line.startswith("clipctl study run")]
    assert len(studies) == 1 and "recipes/study2/a " in studies[0] and "--seeds 0 1 2 " in studies[0]


def test_make_study2_part_b_refuses_without_the_first_study(tmp_path):
    result, calls = _make_study2(tmp_path, f"STUDY2_OUT={tmp_path / 'out'}")
    assert result.returncode != 0 and "run 'make study' first" in result.stdout
    assert "clipctl study" not in calls


STUDY3 = [n for n in builtin_recipe_names() if re.fullmatch(r"study3/b\d+/\w+_b\d+", n)]
STUDY3_LOSSES = ("clip", "siglip", "dcl", "sogclr_g08", "isogclr_new", "fastclip_v3")


def test_study3_cells_are_the_baselines_and_global_losses_at_16_and_128_in_study2_a_setting():
    recipes = {name: load_recipe(name) for name in STUDY3}
    assert {(name.split("/")[-1].rsplit("_b", 1)[0], r.train.batch_size) for name, r in recipes.items()} == {
        (loss, batch) for loss in STUDY3_LOSSES for batch in (16, 128)
    }
    flat = {name: flatten(r.model_dump()) for name, r in recipes.items()}
    reference = flat[STUDY3[0]]
    for name, r in recipes.items():
        assert name.split("/")[1] == f"b{r.train.batch_size}", name  # one part (folder) per global batch
        assert r.train.epochs == 20 and r.data.shapes_train_size * r.data.train_fraction == 2000, name
        assert r.optim.lr == pytest.approx(1e-3 * math.sqrt(r.train.batch_size / 32), rel=1e-2), name
        differs = {k for k in set(flat[name]) | set(reference) if flat[name].get(k) != reference.get(k)}
        assert {k for k in differs if not k.startswith("loss.")} <= {"run.name", "train.batch_size", "optim.lr"}
    by_name = {name.split("/")[-1]: r.loss for name, r in recipes.items()}
    for batch in (16, 128):
        assert by_name[f"sogclr_g08_b{batch}"].gamma == 0.8
        siglip = by_name[f"siglip_b{batch}"]
        assert siglip.temperature == 0.1 and siglip.bias_init == -10.0  # the paper's t' = log 10, b = -10
        for adaptive in ("isogclr_new", "fastclip_v3"):  # ρ below log(B−1): τ can rise as well as fall
            assert by_name[f"{adaptive}_b{batch}"].rho_I < math.log(batch - 1), adaptive


def test_make_study3_chooses_lr_on_seed_0_then_trains_five_paired_seeds():
    plan = subprocess.run(
        ["make", "-n", "study3", "STAMP=Makefile"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "for part in b16 b128;" in plan
    assert "clipctl study run recipes/study3/$part --key optim.lr --factors 0.5,1,2" in plan
    assert '--seeds "1 2 3 4 5"' in plan and "--grid-out runs/study3/$part-grid --out runs/study3/$part" in plan
    assert "compare runs/study3/b16 runs/study3/b128 --json" in plan
    assert "clipctl study paired bench/results/study3/compare.json" in plan
    assert "clipctl study by-batch bench/results/study3/compare.json" in plan
