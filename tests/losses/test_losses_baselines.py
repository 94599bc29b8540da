"""The baselines a reviewer asks for: `siglip`, `dcl` and `cyclip`, each against autograd of its paper's objective
(tests/helpers/losses_reference.py) in float64; siglip against open_clip's `SigLipLoss`; dcl against sogclr γ = 1."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers.losses_reference import cyclip_objective, dcl_objective, normalized, siglip_objective
from helpers.trainkit import make_tiny_shapes, tiny_recipe

from clipctl.errors import ResumeError
from clipctl.losses import build_loss
from clipctl.recipe import builtin_recipes_dir
from clipctl.run.checkpoint import load_state
from clipctl.train.trainer import TrainOptions, train

B, DIM = 7, 5


def close(actual, expected, what: str, rtol: float = 1e-6) -> None:
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        rtol=rtol,
        atol=1e-12,
        msg=lambda m: f"{what}: {m}",
    )


def features(seed: int, spread: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit image and text features (float64 leaves); `spread` < 1 gives the pairs larger similarities."""
    gen = torch.Generator().manual_seed(seed)
    return normalized(gen, B, DIM, spread).requires_grad_(True), normalized(gen, B, DIM, spread).requires_grad_(True)


def leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [v.detach().clone().requires_grad_(True) for v in tensors]


# -------------------------------------------------------------------------------------------- siglip

SIGLIP_STARTS = {"paper": {}, "moved": {"temperature": 0.05, "bias_init": -3.0}}


def siglip_step(cfg: dict, seed: int):
    """The loss on one batch in float64: the loss, its output and the features it saw."""
    loss_fn = build_loss({"name": "siglip", **cfg}, num_samples=B).double()
    x, t = features(seed)
    out = loss_fn(x, t, torch.arange(B), epoch=0)
    out.loss.backward()
    return loss_fn, out, x, t


@pytest.mark.parametrize("start", sorted(SIGLIP_STARTS))
def test_siglip_is_the_papers_sigmoid_loss(start):
    """Value, feature gradients and the t', b gradients against −(1/|B|) Σ_ij log σ(z_ij(t·x_i·y_j + b))."""
    loss_fn, out, x, t = siglip_step(SIGLIP_STARTS[start], seed=1)
    x2, t2, t_prime, b = leaves(x, t, loss_fn.theta, loss_fn.bias)
    expected = siglip_objective(x2, t2, t_prime, b)
    expected.backward()
    close(out.loss, expected, "loss")
    for got, want, what in ((x, x2, "x"), (t, t2, "t"), (loss_fn.theta, t_prime, "t'"), (loss_fn.bias, b, "b")):
        close(got.grad, want.grad, f"∂/∂{what}")


@pytest.mark.parametrize("start", sorted(SIGLIP_STARTS))
def test_siglip_equals_open_clip(start):
    """open_clip's SigLipLoss on the same features, logit scale e^{t'} and bias: value and every gradient."""
    from open_clip.loss import SigLipLoss

    loss_fn, out, x, t = siglip_step(SIGLIP_STARTS[start], seed=2)
    x2, t2, t_prime, b = leaves(x, t, loss_fn.theta, loss_fn.bias)
    expected = SigLipLoss()(x2, t2, torch.exp(t_prime), b)
    expected.backward()
    close(out.loss, expected, "loss")
    for got, want, what in ((x, x2, "x"), (t, t2, "t"), (loss_fn.theta, t_prime, "t'"), (loss_fn.bias, b, "b")):
        close(got.grad, want.grad, f"∂/∂{what}")


def test_siglip_starts_as_the_paper_and_learns_t_and_b_in_their_own_group():
    loss_fn = build_loss({"name": "siglip"}, num_samples=B)
    assert loss_fn.theta.item() == pytest.approx(math.log(10)) and loss_fn.bias.item() == -10.0
    (group,) = loss_fn.param_groups(1e-3)
    assert group["params"] == [loss_fn.theta, loss_fn.bias] and group["lr"] == 1e-3
    assert group["weight_decay"] == 0.0 and group["name"].startswith("loss.")
    assert build_loss({"name": "siglip", "lr_tau": 0.02}, num_samples=B).param_groups(1e-3)[0]["lr"] == 0.02
    with torch.no_grad():
        loss_fn.theta.fill_(7.0)
        loss_fn.bias.fill_(55.0)
    loss_fn.after_optimizer_step()
    assert loss_fn.theta.item() == pytest.approx(math.log(100)) and loss_fn.bias.item() == 55.0  # b is not boxed
    x, t = features(3)
    assert loss_fn(x.float(), t.float(), torch.arange(B)).stats == {"tau": pytest.approx(0.01), "bias": 55.0}


def test_siglip_t_and_b_resume_and_another_losss_state_is_refused():
    trained = build_loss({"name": "siglip"}, num_samples=B)
    with torch.no_grad():
        trained.theta.fill_(3.0)
        trained.bias.fill_(-4.5)
    resumed = build_loss({"name": "siglip"}, num_samples=B)
    resumed.load_state_dict(trained.state_dict())
    assert resumed.theta.item() == 3.0 and resumed.bias.item() == -4.5
    clip_state = build_loss({"name": "clip", "learnable_temp": True}, num_samples=B).state_dict()
    with pytest.raises(ResumeError, match="does not match this loss configuration.*bias") as err:
        resumed.load_state_dict(clip_state)
    assert err.value.exit_code == 5 and "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------- dcl


@pytest.mark.parametrize("tau", [0.01, 0.1])
def test_dcl_is_the_decoupled_contrastive_loss(tau):
    x, t = features(4)
    out = build_loss({"name": "dcl", "temperature": tau}, num_samples=B)(x, t, torch.arange(B), epoch=0)
    out.loss.backward()
    x2, t2 = leaves(x, t)
    expected = dcl_objective(x2, t2, tau)
    expected.backward()
    close(out.loss, expected, "loss")
    close(x.grad, x2.grad, "∂/∂x")
    close(t.grad, t2.grad, "∂/∂t")
    assert out.stats == {"tau": tau}


def feature_gradients(cfg: dict, steps: list[tuple[int, torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """The loss's gradient w.r.t. the features at every step of a sequence on the same samples."""
    loss_fn = build_loss(cfg, num_samples=B)
    grads = []
    for epoch, x, t in steps:
        x, t = leaves(x, t)
        loss_fn(x, t, torch.arange(B), epoch=epoch).loss.backward()
        grads.append(torch.cat([x.grad, t.grad], dim=1))
    return grads


def test_dcl_gradient_is_sogclr_gamma_1_divided_by_tau():
    """sogclr's gradient is mean_i τ∇log g_i per side, and τ·log g_i = τ·L^DCL_i − τ·log(B−1): with γ = 1 (the fresh
    batch estimate at every step, revisits included) sogclr's feature gradient is τ × DCL's. With γ < 1 a revisit
    divides by the tracked estimate instead, and the two differ."""
    tau = 0.05
    steps = [(epoch, *features(10 + epoch, spread=0.6)) for epoch in range(3)]
    dcl = feature_gradients({"name": "dcl", "temperature": tau}, steps)
    fresh = feature_gradients({"name": "sogclr", "temperature": tau, "gamma": 1.0}, steps)
    for k, (sogclr, decoupled) in enumerate(zip(fresh, dcl)):
        close(sogclr, tau * decoupled, f"step {k}: sogclr γ=1 gradient vs τ × dcl")
    tracked = feature_gradients({"name": "sogclr", "temperature": tau, "gamma": 0.5}, steps)
    close(tracked[0], tau * dcl[0], "epoch 0 (γ = 1 there)")
    assert not torch.allclose(tracked[2], tau * dcl[2], rtol=1e-3), "γ = 0.5 on a revisit should differ"


# -------------------------------------------------------------------------------------------- cyclip


@pytest.mark.parametrize("learnable", [False, True])
def test_cyclip_is_clip_plus_the_consistency_regularisers(learnable):
    cfg = {"temperature": 0.04, "learnable_temp": learnable, "lambda_in_modal": 0.3, "lambda_cross_modal": 0.7}
    loss_fn = build_loss({"name": "cyclip", **cfg}, num_samples=B).double()
    x, t = features(5)
    out = loss_fn(x, t, torch.arange(B), epoch=0)
    out.loss.backward()
    x2, t2, theta = leaves(x, t, loss_fn.theta)  # θ as stored: −log 0.04 rounded to float32 at construction
    expected = cyclip_objective(x2, t2, torch.exp(-theta), 0.3, 0.7)
    expected.backward()
    close(out.loss, expected, "loss")
    close(x.grad, x2.grad, "∂/∂x")
    close(t.grad, t2.grad, "∂/∂t")
    if learnable:
        close(loss_fn.theta.grad, theta.grad, "∂/∂θ")
        assert loss_fn.param_groups(1e-3)[0]["weight_decay"] == 0.0
    else:
        assert loss_fn.param_groups(1e-3) == [] and not list(loss_fn.parameters())
    tau = torch.exp(-theta.detach())
    plain = cyclip_objective(x2.detach(), t2.detach(), tau, 0.0, 0.0)
    close(out.stats["contrastive"], plain, "stats: InfoNCE term")
    for key, weights in (("in_modal", (1.0, 0.0)), ("cross_modal", (0.0, 1.0))):
        alone = cyclip_objective(x2.detach(), t2.detach(), tau, *weights) - plain
        close(out.stats[key], alone, f"stats: {key} term (unweighted)", rtol=1e-5)
    assert set(out.stats) == {"tau", "contrastive", "in_modal", "cross_modal"}


def test_cyclip_with_zero_weights_is_clip():
    x, t = features(6)
    cyclip = build_loss({"name": "cyclip", "lambda_in_modal": 0.0, "lambda_cross_modal": 0.0}, num_samples=B)
    clip = build_loss({"name": "clip"}, num_samples=B)
    assert cyclip(x, t, torch.arange(B)).loss.item() == clip(x, t, torch.arange(B)).loss.item()


# ------------------------------------------------------------------------------------ recipes and trainer


def test_recipes_validate_accepts_the_baselines(run_cli, tmp_path):
    tables = {
        "siglip": 'name = "siglip"\ntemperature = 0.1\nbias_init = -10\nlr_tau = 0.001',
        "dcl": 'name = "dcl"\ntemperature = 0.05',
        "cyclip": 'name = "cyclip"\nlearnable_temp = true\ntemperature = 0.07\nlambda_in_modal = 0.25\n'
        "lambda_cross_modal = 0.25",
    }
    paths = []
    for name, table in tables.items():
        paths.append(tmp_path / f"{name}.toml")
        paths[-1].write_text(f'extends = "{builtin_recipes_dir() / "quickstart.toml"}"\n[loss]\n{table}\n')
    code, _, err = run_cli("recipes", "validate", *paths)
    assert code == 0, err


@pytest.mark.parametrize(
    ("name", "key", "message"),
    [
        ("siglip", "learnable_temp = true", "loss.learnable_temp: not used by loss 'siglip' (used by clip, cyclip)"),
        ("siglip", "temperature = 2.0", "loss: temperature = 2 is outside the learnable box [0.01, 1] of siglip"),
        ("dcl", "gamma = 1.0", "loss.gamma: not used by loss 'dcl' (used by sogclr,"),
        ("cyclip", "lambda_in_modal = -1.0", "loss.lambda_in_modal = -1.0: Input should be greater than or equal to 0"),
        ("clip", "lambda_cross_modal = 0.5", "loss.lambda_cross_modal: not used by loss 'clip' (used by cyclip)"),
    ],
)
def test_recipes_validate_refuses_bad_baseline_keys(run_cli, tmp_path, name, key, message):
    path = tmp_path / "bad.toml"
    path.write_text(f'[loss]\nname = "{name}"\n{key}\n')
    code, _, err = run_cli("recipes", "validate", path)
    line = " ".join(err.split())
    assert code == 2 and message in line and str(path) in line and "Traceback" not in err


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_tiny_shapes(tmp_path_factory.mktemp("data"))


TRAIN_STATS = {"siglip": {"tau", "bias"}, "dcl": {"tau"}, "cyclip": {"tau", "contrastive", "in_modal", "cross_modal"}}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRAIN_STATS))
def test_each_baseline_trains_a_run(shapes, tmp_path, name):
    """One epoch of the tiny quickstart through the trainer: completed, finite losses, the loss's statistics logged,
    and siglip's t' and b trained in their own group without weight decay and saved with the run."""
    recipe = tiny_recipe(shapes, **{"loss.name": name, "train.epochs": 1})
    summary = train(recipe, TrainOptions(out_dir=tmp_path, name=name))
    assert summary["status"] == "completed" and summary["steps"] == 8
    records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "train"]
    assert steps and all(TRAIN_STATS[name] <= set(r) and math.isfinite(r["loss"]) for r in steps)
    assert f'name = "{name}"' in (tmp_path / name / "recipe.toml").read_text()
    state = load_state(tmp_path / name / "state" / "last.pt")
    if name == "siglip":
        assert state["loss"]["theta"].item() != pytest.approx(math.log(10), abs=1e-6)
        assert state["loss"]["bias"].item() != pytest.approx(-10.0, abs=1e-6)
        group = state["optimizer"]["param_groups"][-1]
        assert group["name"] == "loss.tau_bias" and group["weight_decay"] == 0.0 and len(group["params"]) == 2
