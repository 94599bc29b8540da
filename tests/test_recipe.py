"""Recipe schema: loading, extends, overrides and every bad-input path (one line, exit 2)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from clipctl.errors import UsageError
from clipctl.recipe import (
    apply_overrides,
    builtin_recipe_names,
    load_recipe,
    merge_values,
    override_args,
    parse_override,
    recipe_warnings,
    tomllib,
    validate_recipe,
)
from clipctl.tune.recipe import load_tune_recipe, tune_phases


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path_or_name, overrides=()):
    with pytest.raises(UsageError) as info:
        load_recipe(path_or_name, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    assert info.value.exit_code == 2
    return message


def test_builtin_recipes_all_validate():
    names = builtin_recipe_names()
    assert {
        "quickstart",
        "clip_adamw",
        "sogclr_adamw",
        "isogclr_radam",
        "tune/phase1",
        "tune/phase2",
        "tune/phase3",
    } <= set(names)
    for name in names:
        if name.startswith("tune/"):
            load_tune_recipe(name)
        else:
            load_recipe(name)


def test_isogclr_radam_has_table3_values():
    r = load_recipe("isogclr_radam")
    assert (r.loss.name, r.optim.name, r.sched.name) == ("isogclr_new", "radam", "tanh")
    assert r.optim.lr == pytest.approx(1.64e-4) and r.optim.weight_decay == pytest.approx(3.73e-4)
    assert r.model.embed_dim == 512 and r.loss.gamma == pytest.approx(0.966)
    # ρ and η moved so the temperatures individualise (ρ < log 127); the report's run is one override away
    assert (r.loss.rho_I, r.loss.rho_T, r.loss.eta_init) == (2.0, 2.0, pytest.approx(1e-4))
    assert not recipe_warnings(r)
    report = load_recipe("isogclr_radam", ["loss.rho_I=9.96", "loss.rho_T=7.47", "loss.eta_init=1e-5"])
    assert len(recipe_warnings(report)) == 1 and "can only fall" in recipe_warnings(report)[0]
    assert r.sched.decay_rate == pytest.approx(0.5679) and r.sched.cooldown_epochs == 1
    assert r.sched.warmup_lr == pytest.approx(1e-3) and r.sched.min_lr == pytest.approx(1e-5)
    # inherited from sogclr_adamw: the course settings
    assert r.train.batch_size == 128 and r.train.epochs == 30 and r.data.image_size == 256


def test_per_loss_defaults_are_filled():
    assert load_recipe("sogclr_adamw", ["loss.name=isogclr"]).loss.tau_max == 0.05
    v2 = load_recipe("sogclr_adamw", ["loss.name=isogclr_new_v2"]).loss
    assert (v2.tau_max, v2.rho_I, v2.eta_init, v2.tau_grad_clip) == (1.0, 6.0, 0.01, 0.0)
    new = load_recipe("sogclr_adamw", ["loss.name=isogclr_new", "optim.lr=0.002"]).loss
    assert new.beta_u == 0.5 and new.lr_temp_net == pytest.approx(2e-4)


def test_resolved_recipe_round_trips(tmp_path):
    r = load_recipe("isogclr_radam", ["optim.lr=3e-4"])
    text = r.to_toml()
    again = load_recipe(write(tmp_path / "resolved.toml", text))
    assert again.to_dict() == r.to_dict()
    assert "temperature" not in tomllib.loads(text)["loss"]  # keys the loss ignores are left out
    assert again.sha256() == r.sha256()


def test_override_precedence_file_over_extends_and_cli_over_file(tmp_path):
    write(
        tmp_path / "base.toml",
        "[optim]\nlr = 0.1\nweight_decay = 0.5\n[train]\nepochs = 3\n[sched]\nwarmup_epochs = 1\n",
    )
    child = write(tmp_path / "child.toml", 'extends = "base.toml"\n[optim]\nlr = 0.2\n')
    r = load_recipe(child)
    assert (r.optim.lr, r.optim.weight_decay, r.train.epochs) == (0.2, 0.5, 3)
    r = load_recipe(child, ["optim.lr=0.3", "train.epochs=4"])
    assert (r.optim.lr, r.train.epochs) == (0.3, 4)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("optim.lr=3e-4", (["optim", "lr"], 3e-4)),
        ("loss.name=sogclr", (["loss", "name"], "sogclr")),
        ('loss.name="sogclr"', (["loss", "name"], "sogclr")),
        ("train.epochs=5", (["train", "epochs"], 5)),
        ("data.augment=false", (["data", "augment"], False)),
        ("optim.betas=[0.9, 0.98]", (["optim", "betas"], [0.9, 0.98])),
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


def test_values_merge_as_data_exactly_as_their_overrides_would():
    raw = {"optim": {"lr": 0.1}, "model": {"text_config": {"dim": 8, "n_layers": 2}}}
    values = {
        "optim.lr": 3e-4,
        "loss.name": "sogclr",
        "optim.betas": [0.9, 0.98],
        "train.deterministic": True,
        "model.text_config": {"dim": 64, "odd key": "x"},
        "model.text_config.n_heads": 4,
    }
    assert merge_values(raw, values) == apply_overrides(raw, override_args(values))
    assert raw["optim"]["lr"] == 0.1  # the caller's tables are not changed

    def error(call) -> str:
        with pytest.raises(UsageError) as info:
            call()
        return str(info.value)

    for bad in ({"train": 3}, {"optim.lr.x": 1}):  # not table.key; a value, not a table
        assert error(lambda bad=bad: merge_values(raw, bad)) == error(
            lambda bad=bad: apply_overrides(raw, override_args(bad))
        )


def test_tune_phases_are_the_builtin_phase_files():
    assert tune_phases() == [1, 2, 3]


@pytest.mark.parametrize("bad", ["optim.lr", "lr=3", "optim..lr=3", "=3", "optim.lr=", "optim.lr=3 e"])
def test_bad_override_syntax(bad):
    message = error_of("quickstart", [bad])
    assert "override" in message


def test_malformed_toml_names_line_and_column(tmp_path):
    message = error_of(write(tmp_path / "bad.toml", "[optim]\nlr = = 3\n"))
    assert "bad.toml" in message and "line 2" in message and "column" in message


def test_unknown_key_suggests_closest(tmp_path):
    message = error_of(write(tmp_path / "r.toml", "[optim]\nlrr = 0.1\n"))
    assert "optim.lrr: unknown key; did you mean optim.lr?" in message
    message = error_of(write(tmp_path / "r2.toml", "[optimizer]\nlr = 0.1\n"))
    assert "did you mean optim?" in message


def test_wrong_type_names_key_and_value(tmp_path):
    message = error_of(write(tmp_path / "r.toml", '[train]\nepochs = "ten"\n'))
    assert "train.epochs = 'ten'" in message and "integer" in message


def test_out_of_range_names_range(tmp_path):
    message = error_of(write(tmp_path / "r.toml", "[optim]\nlr = -1.0\n"))
    assert "optim.lr = -1.0" in message and "greater than 0" in message
    message = error_of("quickstart", ["data.train_fraction=1.5"])
    assert "data.train_fraction = 1.5" in message and "less than or equal to 1" in message


@pytest.mark.parametrize(
    "key,value,valid",
    [
        ("loss.name", "simclr", "'isogclr_new'"),
        ("optim.name", "adagrad9", "'radam'"),
        ("sched.name", "linear", "'tanh'"),
    ],
)
def test_unknown_names_list_the_valid_ones(key, value, valid):
    message = error_of("quickstart", [f"{key}={value}"])
    assert f"{key} = '{value}'" in message and valid in message


def test_loss_specific_key_on_wrong_loss(tmp_path):
    message = error_of(write(tmp_path / "r.toml", '[loss]\nname = "clip"\nrho_I = 3.0\n'))
    assert "loss.rho_I: not used by loss 'clip'" in message and "isogclr" in message
    assert "not used by loss 'sogclr'" in error_of("quickstart", ["loss.name=sogclr", "loss.dro_lambda=2"])


def test_inherited_foreign_loss_keys_are_dropped(tmp_path):
    write(tmp_path / "base.toml", '[loss]\nname = "isogclr_new"\nrho_I = 3.0\n')
    child = write(tmp_path / "child.toml", 'extends = "base.toml"\n[loss]\nname = "clip"\n')
    assert load_recipe(child).loss.name == "clip"


def test_missing_file_and_unknown_builtin():
    assert "no such recipe file" in error_of("does/not/exist.toml")
    assert "did you mean quickstart?" in error_of("quickstar")


def test_extends_cycle(tmp_path):
    write(tmp_path / "a.toml", 'extends = "b.toml"\n')
    write(tmp_path / "b.toml", 'extends = "a.toml"\n')
    message = error_of(tmp_path / "a.toml")
    assert "cycle" in message and "a.toml -> b.toml -> a.toml" in message


def test_extends_missing_parent(tmp_path):
    assert "no such file" in error_of(write(tmp_path / "a.toml", 'extends = "nope.toml"\n'))


def test_cross_field_checks(tmp_path):
    assert "tau_min" in error_of("quickstart", ["loss.tau_min=0.5", "loss.tau_max=0.1"])
    assert "train.batch_size = 100 is not divisible by train.grad_accum = 3" in error_of(
        "quickstart", ["train.batch_size=100", "train.grad_accum=3"]
    )
    one_pair = error_of("quickstart", ["train.batch_size=2", "train.grad_accum=2"])
    assert "the contrast batch train.batch_size / train.grad_accum = 2 / 2 = 1 pair has no negatives" in one_pair


def test_tune_recipe_errors(tmp_path):
    base = Path("recipes/quickstart.toml").resolve()

    def tune_file(space: str) -> Path:
        return write(tmp_path / "t.toml", f'[tune]\nbase = "{base}"\n[tune.space]\n{space}\n')

    with pytest.raises(UsageError, match="empty"):
        load_tune_recipe(write(tmp_path / "e.toml", f'[tune]\nbase = "{base}"\n'))
    with pytest.raises(UsageError, match="did you mean optim.lr"):
        load_tune_recipe(tune_file('"optim.lrr" = { low = 0.1, high = 0.2 }'))
    with pytest.raises(UsageError, match="low"):
        load_tune_recipe(tune_file('"optim.lr" = { low = 0.2, high = 0.1 }'))
    with pytest.raises(UsageError, match="optim.name"):
        load_tune_recipe(tune_file('"optim.name" = ["adamw", "nope"]'))
    tune, _ = load_tune_recipe(
        tune_file('"loss.name" = ["sogclr", "clip"]\n"optim.lr" = { low = 1e-4, high = 1e-2, prior = "log-uniform" }')
    )
    assert tune.tune.space["loss.name"] == ["sogclr", "clip"]


@pytest.mark.parametrize(
    ("rho", "batch", "accum", "warned"), [(8.0, 32, 1, True), (1.5, 32, 1, False), (3.5, 64, 2, True)]
)
def test_rho_at_or_above_log_batch_warns_that_tau_can_only_fall(rho, batch, accum, warned):
    recipe = validate_recipe(
        {
            "loss": {"name": "isogclr_new", "rho_I": rho, "rho_T": rho},
            "train": {"batch_size": batch, "grad_accum": accum},
        }
    )
    messages = recipe_warnings(recipe)
    assert len(messages) == (1 if warned else 0)
    if warned:
        contrast = batch // accum
        assert f"loss.rho_I = {rho:g} and loss.rho_T = {rho:g}" in messages[0]
        assert f"B = {contrast}" in messages[0] and f"{math.log(contrast - 1):.2f}" in messages[0]
        assert "can only fall" in messages[0] and "\n" not in messages[0]


def test_rho_warning_is_printed_by_validate_and_ignores_other_losses(run_cli, tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[loss]\nname = "isogclr_new_v2"\n[train]\nbatch_size = 32\n')
    code, _, err = run_cli("recipes", "validate", str(path))
    assert code == 0 and "loss.rho_I = 6 and loss.rho_T = 6 >= log(B-1) = 3.43" in " ".join(err.split())
    assert recipe_warnings(validate_recipe({"loss": {"name": "sogclr"}, "train": {"batch_size": 4}})) == []


@pytest.mark.parametrize(("rho", "batch", "warned"), [(4.0, 128, False), (4.0, 32, True), (6.5, 1024, False)])
def test_fastclip_v3_warns_when_its_global_tau_can_only_fall(rho, batch, warned):
    """dF/dτ ≥ 2(ρ − log(B−1)) on a fresh estimate, with ρ the mean of rho_I and rho_T."""
    recipe = validate_recipe(
        {"loss": {"name": "fastclip_v3", "rho_I": rho, "rho_T": rho}, "train": {"batch_size": batch}}
    )
    messages = recipe_warnings(recipe)
    assert len(messages) == (1 if warned else 0)
    if warned:
        assert f"(loss.rho_I + loss.rho_T)/2 = {rho:g} >= log(B-1) = {math.log(batch - 1):.2f}" in messages[0]
        assert "global temperature of fastclip_v3 can only fall" in messages[0] and "\n" not in messages[0]


def test_fastclip_v3_default_rho_lets_tau_move_at_the_recipes_batch():
    recipe = validate_recipe({"loss": {"name": "fastclip_v3"}, "train": {"batch_size": 128}})
    assert recipe.loss.rho_I == recipe.loss.rho_T == 4.0 and recipe_warnings(recipe) == []


@pytest.mark.parametrize("start", [0.005, 2.0])
def test_clip_refuses_a_learnable_start_outside_its_box(start, run_cli, tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(f'[loss]\nname = "clip"\nlearnable_temp = true\ntemperature = {start}\n')
    code, _, err = run_cli("recipes", "validate", str(path))
    assert code == 2 and "Traceback" not in err
    line = " ".join(err.split())
    assert f"loss: temperature = {start:g} is outside the learnable box [0.01, 1] of clip" in line
    assert validate_recipe({"loss": {"name": "clip", "temperature": start}}).loss.temperature == start  # fixed τ: ok
