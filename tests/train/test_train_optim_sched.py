"""Optimizer factory (all report names) and schedules (warmup start, peak, decay, cooldown, min_lr)."""

from __future__ import annotations

import pytest
import torch

from clipctl.errors import UsageError
from clipctl.recipe import OPTIMIZER_NAMES, load_recipe
from clipctl.train.optim import build_optimizer, optimizer_info, optimizer_kwargs, parameter_groups
from clipctl.train.schedule import build_scheduler


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)


def loss_groups() -> list[dict]:
    theta = torch.nn.Parameter(torch.tensor(4.6))
    return [{"params": [theta], "weight_decay": 0.0, "lr": 1e-2, "name": "temperature"}]


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_every_optimizer_builds_and_steps_or_explains(name):
    recipe = load_recipe("quickstart", [f"optim.name={name}", "optim.weight_decay=0.1"])
    model = Tiny()
    try:
        optimizer = build_optimizer(model, loss_groups(), recipe.optim)
    except UsageError as err:
        message = str(err)
        assert name.startswith("fused") and "\n" not in message and "use optim.name" in message
        return
    before = model.linear.weight.detach().clone()
    model.norm(model.linear(torch.randn(8, 4))).pow(2).sum().backward()
    optimizer.step()
    assert not torch.equal(before, model.linear.weight)


def test_every_name_is_in_timms_registry_and_gets_only_what_it_accepts():
    from timm.optim import list_optimizers

    for name in OPTIMIZER_NAMES:
        info = optimizer_info(name)
        assert info.name in list_optimizers()
        kwargs = optimizer_kwargs(load_recipe("quickstart", [f"optim.name={name}"]).optim)
        assert ("eps" in kwargs) == info.has_eps and ("momentum" in kwargs) == info.has_momentum, name
        assert "betas" not in kwargs or (info.has_betas and info.num_betas == 2), name


def test_no_weight_decay_on_biases_norms_and_temperatures():
    model = Tiny()
    groups = parameter_groups(model, loss_groups(), weight_decay=0.1)
    decay = {id(p) for g in groups if g.get("weight_decay", 0) > 0 for p in g["params"]}
    assert decay == {id(model.linear.weight)}
    assert any(g.get("name") == "temperature" and g["weight_decay"] == 0 for g in groups)


def test_frozen_everything_is_a_clear_error():
    model = Tiny().requires_grad_(False)
    with pytest.raises(UsageError, match="froze everything"):
        parameter_groups(model, [], 0.1)


def lr_curve(overrides: list[str], epochs: int = 10, updates: int = 10) -> list[float]:
    recipe = load_recipe("quickstart", [f"train.epochs={epochs}", "optim.lr=1e-3", *overrides])
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=recipe.optim.lr)
    scheduler = build_scheduler(optimizer, recipe.sched, recipe.train.epochs, updates)
    curve = []
    for update in range(epochs * updates):
        scheduler.step_update(update)
        curve.append(optimizer.param_groups[0]["lr"])
    return curve


COMMON = ["sched.warmup_epochs=2", "sched.warmup_lr=1e-6", "sched.min_lr=1e-5", "sched.cooldown_epochs=1"]


@pytest.mark.parametrize("name", ["cosine", "tanh"])
def test_decaying_schedules(name):
    curve = lr_curve([f"sched.name={name}", *COMMON])
    assert curve[0] == pytest.approx(1e-6)  # warmup starts at warmup_lr
    assert all(a < b for a, b in zip(curve[:20], curve[1:20]))  # linear warmup rises
    assert max(curve) <= 1e-3 + 1e-12 and max(curve) > 0.8e-3  # peak near optim.lr, never above
    assert curve[-10:] == pytest.approx([1e-5] * 10)  # the cooldown epoch holds min_lr
    assert all(a >= b - 1e-12 for a, b in zip(curve[25:90], curve[26:90]))  # decays after warmup


def test_step_schedule_decays_by_rate_every_period():
    curve = lr_curve(
        [
            "sched.name=step",
            "sched.warmup_epochs=0",
            "sched.decay_epochs=3",
            "sched.decay_rate=0.5",
            "sched.cooldown_epochs=0",
        ]
    )
    assert curve[0] == pytest.approx(1e-3) and curve[29] == pytest.approx(1e-3)
    assert curve[30] == pytest.approx(5e-4) and curve[60] == pytest.approx(2.5e-4)


def test_const_schedule_holds_lr_after_warmup():
    curve = lr_curve(["sched.name=const", "sched.warmup_epochs=1", "sched.warmup_lr=1e-5"])
    assert curve[0] == pytest.approx(1e-5)
    assert curve[10:] == pytest.approx([1e-3] * 90)
