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


def group_curves(overrides: list[str], tau_lr: float, epochs: int = 10, updates: int = 10) -> dict[str, list[float]]:
    """lr per update of the model's group and of a loss group ("loss.tau") with its own lr."""
    recipe = load_recipe("quickstart", [f"train.epochs={epochs}", "optim.lr=1e-3", *overrides])
    model, tau = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD(
        [{"params": [model], "name": "decay"}, {"params": [tau], "lr": tau_lr, "name": "loss.tau"}], lr=recipe.optim.lr
    )
    scheduler = build_scheduler(optimizer, recipe.sched, recipe.train.epochs, updates)
    curves: dict[str, list[float]] = {"decay": [], "loss.tau": []}
    for update in range(epochs * updates):
        scheduler.step_update(update)
        for group in optimizer.param_groups:
            curves[group["name"]].append(group["lr"])
    return curves


def test_a_loss_group_below_min_lr_follows_the_model_relatively_and_never_rises():
    """lr_tau = 1e-6 under min_lr = 1e-5: timm's one schedule would lift it toward min_lr; here it decays."""
    curves = group_curves(["sched.name=cosine", "sched.warmup_epochs=0", "sched.min_lr=1e-5"], tau_lr=1e-6)
    tau, model = curves["loss.tau"], curves["decay"]
    assert tau[0] == pytest.approx(1e-6) and max(tau) <= 1e-6 * (1 + 1e-9)
    assert all(a >= b - 1e-18 for a, b in zip(tau, tau[1:])), "the loss group's lr must never rise"
    ratios = [t / m for t, m in zip(tau, model)]
    assert ratios == pytest.approx([1e-3] * len(ratios))  # the model's schedule, scaled by 1e-6 / 1e-3


def test_a_loss_group_warms_up_relatively_and_takes_absolute_keys_when_given():
    relative = group_curves([*COMMON, "sched.name=cosine"], tau_lr=1e-2)
    assert relative["loss.tau"][0] == pytest.approx(1e-6 * 10)  # warmup_lr x (1e-2 / 1e-3)
    assert relative["loss.tau"][-1] == pytest.approx(1e-5 * 10)
    absolute = group_curves(
        [*COMMON, "sched.name=cosine", "sched.loss_min_lr=1e-4", "sched.loss_warmup_lr=2e-3"], tau_lr=1e-2
    )
    assert absolute["loss.tau"][0] == pytest.approx(2e-3) and absolute["loss.tau"][-1] == pytest.approx(1e-4)
    assert absolute["decay"] == relative["decay"]  # the model's own schedule is untouched


def test_a_loss_floor_above_the_groups_lr_is_refused():
    with pytest.raises(UsageError, match=r"sched.loss_min_lr = 0.1 exceeds the learning rate 0.01 .*'loss.tau'"):
        group_curves(["sched.loss_min_lr=0.1"], tau_lr=1e-2)


def test_a_schedule_state_saved_as_one_timm_schedule_still_loads():
    """Before loss groups had their own schedule the state was one timm scheduler's state_dict."""
    recipe = load_recipe("quickstart", ["train.epochs=4"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=recipe.optim.lr)
    scheduler = build_scheduler(optimizer, recipe.sched, recipe.train.epochs, 10)
    old = scheduler.parts["model"].state_dict()
    fresh = build_scheduler(optimizer, recipe.sched, recipe.train.epochs, 10)
    fresh.load_state_dict(old)
    fresh.step_update(25)
    scheduler.step_update(25)
    assert fresh.state_dict() == scheduler.state_dict()


def test_the_schedule_still_drives_the_groups_after_the_optimizer_reloads_its_state():
    """A resume and Accelerate's prepare call optimizer.load_state_dict, which replaces the group dicts."""
    recipe = load_recipe("quickstart", ["train.epochs=2", "optim.lr=1e-3", "sched.warmup_epochs=1"])
    tau = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD(
        [{"params": [torch.nn.Parameter(torch.zeros(1))]}, {"params": [tau], "lr": 1e-2, "name": "loss.tau"}], lr=1e-3
    )
    scheduler = build_scheduler(optimizer, recipe.sched, recipe.train.epochs, 10)
    optimizer.load_state_dict(optimizer.state_dict())
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-5, 1e-4])  # warmup starts
    scheduler.step_update(10)  # warmup over, halfway down the cosine: min + (lr − min)/2
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([5.05e-4, 5.05e-3])


@pytest.mark.parametrize(("name", "fused"), [("adamw", True), ("adam", True), ("radam", None), ("sgd", None)])
def test_adam_and_adamw_take_torchs_fused_kernel_on_the_cpu(name, fused):
    recipe = load_recipe("quickstart", [f"optim.name={name}"])
    optimizer = build_optimizer(Tiny(), loss_groups(), recipe.optim)
    assert all(group.get("fused") is fused for group in optimizer.param_groups)


def quickstart_towers():
    from clipctl.losses import build_loss
    from clipctl.model.clip import build_model

    recipe = load_recipe("quickstart", ["data.image_size=32", "loss.name=clip"])
    torch.manual_seed(0)
    model = build_model(recipe.model, vocab_size=100, pad_id=0, load_weights=False)
    loss = build_loss(recipe.loss, num_samples=8, total_epochs=1, embed_dim=recipe.model.embed_dim)
    optimizer = build_optimizer(model, loss.param_groups(recipe.optim.lr), recipe.optim)
    return model, loss, optimizer


def per_tensor(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same optimizer on the per-tensor path the trainer took before it chose the fused kernel."""
    for group in optimizer.param_groups:
        group["fused"] = None
    return optimizer


def test_the_fused_update_is_the_per_tensor_update():
    """The quickstart towers' parameters, the same gradients, three updates: equal to float rounding."""
    params = []
    for fused in (True, False):
        model, _, optimizer = quickstart_towers()
        optimizer = optimizer if fused else per_tensor(optimizer)
        generator = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=generator)
            optimizer.step()
        params.append([p.detach() for p in model.parameters()])
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(*params))


def test_the_fused_update_trains_the_quickstart_towers_as_the_per_tensor_one():
    """Five updates on the same batches from the same seed: the losses agree to float rounding. (The weights drift
    apart by up to ~3e-5: Adam turns rounding noise in near-zero gradients, such as the attention key biases', whose
    true gradient is zero, into steps of about the learning rate, on either path.)"""
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 32, 32, generator=generator), torch.randint(1, 99, (8, 12), generator=generator))]
    runs = []
    for fused in (True, False):
        model, loss, optimizer = quickstart_towers()
        optimizer = optimizer if fused else per_tensor(optimizer)
        losses = []
        for images, tokens in batches * 5:
            out = loss(*model(images, tokens), torch.arange(8), stats=False)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(out.loss.item())
        runs.append(losses)
    assert runs[0] == pytest.approx(runs[1], rel=1e-5)
