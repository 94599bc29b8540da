"""Per-sample state written by the release before the log domain (shifted s, shift b, ε; v2's scalars b_pos, r)
still loads: it converts to ℓ = log s + b (s = 0: unvisited), says so once, and the next step computes what that
release computed (at τ ≥ 0.03 on these batches the old form was exact, so the two must agree).

tests/losses/data/old_form_states.pt was written by tests/losses/data/make_old_form_states.py run against commit
54df835 (the last release with the shifted form)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from clipctl.errors import UsageError
from clipctl.losses import build_loss, parse_loss_config
from clipctl.recipe import validate_recipe

OLD = torch.load(Path(__file__).parent / "data" / "old_form_states.pt", weights_only=True)


@pytest.mark.parametrize("name", sorted(OLD))
def test_old_form_state_converts_and_continues_like_the_old_release(name, capsys):
    saved = OLD[name]
    old = saved["state"]["_extra_state"]
    loss_fn = build_loss(saved["config"], num_samples=14).double()
    loss_fn.load_state_dict(saved["state"])
    assert "old shifted form" in capsys.readouterr().err
    at = {c: i for i, c in enumerate(old["columns"])}
    for side in "IT":
        s, b = old["values"][:, at[f"s_{side}"]].double(), old["values"][:, at[f"b_{side}"]].double()
        visited = s > 0
        assert bool(visited.any()) and not bool(visited.all()), "the fixture must hold visited and unvisited samples"
        log_u = loss_fn.state.tensors[f"log_u_{side}"].double()
        torch.testing.assert_close(log_u[visited], torch.log(s[visited]) + b[visited], rtol=1e-6, atol=1e-6)
        assert bool(torch.isneginf(log_u[~visited]).all())
    if "r" in old["scalars"]:
        expected = math.log(float(old["scalars"]["r"])) + float(old["scalars"]["b_pos"])
        assert loss_fn.state.tensors["log_u_pos"].item() == pytest.approx(expected, rel=1e-6)

    step = saved["next"]
    x = step["x"].clone().requires_grad_(True)
    out = loss_fn(x, step["t"], step["index"], epoch=1)
    out.loss.backward()
    torch.testing.assert_close(out.loss, step["loss"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(x.grad, step["grad"], rtol=1e-5, atol=1e-7)

    loss_fn.load_state_dict(saved["state"])  # once per process: a second resume says nothing
    assert "old shifted form" not in capsys.readouterr().err


def test_a_recipe_that_sets_eps_is_refused_naming_the_change():
    for table in ({"name": "sogclr", "eps": 1e-8}, {"name": "isogclr_new", "eps": 0.0}):
        with pytest.raises(UsageError) as err:
            parse_loss_config(table)
        message = str(err.value)
        assert "loss.eps" in message and "log domain" in message and "\n" not in message
        assert err.value.exit_code == 2
    with pytest.raises(UsageError, match="loss.eps: removed"):
        validate_recipe({"loss": {"name": "sogclr", "eps": 1e-8}}, "my.toml")


def test_a_stored_recipe_with_the_old_default_eps_still_reads():
    """A run directory or checkpoint written before the change holds eps = 1e-08 in its resolved recipe."""
    recipe = validate_recipe({"loss": {"name": "sogclr", "eps": 1e-8}}, "ckpt.pt (embedded recipe)", set())
    assert "eps" not in recipe.to_dict()["loss"]


def test_a_recipe_resolved_by_the_old_release_is_still_the_same_recipe():
    """A tune study froze its base recipe's sha256 and a run saved its resolved recipe.toml with `eps = 1e-08`;
    both still name this recipe (the first sha below is what commit 54df835 computed for it, the second what commit
    12d97a1 did, after eps went and before eval.normalize moved to model.normalize)."""
    from clipctl.train.trainer import _recipe_difference

    recipe = validate_recipe({"loss": {"name": "isogclr_new", "rho_I": 2.0}, "train": {"batch_size": 16}})
    assert recipe.earlier_sha256s() == {
        "df52e5610be65597f2fa40083e31833b79660cddc1884444a33099a34147047c",
        "62f542edb386c2818d32330d75c9b2119e3d03348d3510abc72e2fa942d8c10d",
    }
    assert recipe.sha256() not in recipe.earlier_sha256s()
    saved = recipe.to_dict()
    saved["loss"] = {**saved["loss"], "eps": 1e-8}
    assert _recipe_difference(saved, recipe.to_dict()) == ""
    assert len(validate_recipe({"loss": {"name": "clip"}}).earlier_sha256s()) == 1  # clip never had eps
