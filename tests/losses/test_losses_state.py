"""Per-sample state: checkpoint round-trips, resize errors, guards, schedules, registry and options."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from helpers.losses_reference import normalized

from clipctl.errors import ClipctlError, ResumeError, UsageError
from clipctl.losses import LOSSES, build_loss, parse_loss_config
from clipctl.losses.registry import loss_names
from clipctl.losses.schedules import eta_at, gamma_at
from clipctl.losses.state import last_occurrence
from clipctl.recipe import validate_recipe


def batches(seed: int, steps: int, N: int = 12, B: int = 6, d: int = 5):
    gen = torch.Generator().manual_seed(seed)
    for k in range(steps):
        perm = torch.randperm(N, generator=gen)[:B]
        yield k // 2, normalized(gen, B, d, 0.6).float(), normalized(gen, B, d, 0.6).float(), perm


def roundtrip(sd):
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_registry_lists_every_recipe_loss():
    assert (
        tuple(LOSSES)
        == loss_names()
        == ("clip", "sogclr", "isogclr", "isogclr_new", "isogclr_new_v2", "fastclip_v3", "siglip", "dcl", "cyclip")
    )
    for name in loss_names():
        assert isinstance(build_loss({"name": name}, num_samples=4), LOSSES[name])


def test_build_loss_accepts_recipe_section_and_rejects_bad_keys():
    recipe = validate_recipe({"loss": {"name": "isogclr_new", "temp_net": True}, "optim": {"lr": 1e-3}})
    loss_fn = build_loss(recipe.loss, num_samples=8, embed_dim=4)
    (group,) = loss_fn.param_groups(1e-3)
    assert group["lr"] == pytest.approx(1e-4) and group["weight_decay"] == 1e-3
    with pytest.raises(UsageError, match="tau_max"):
        build_loss({"name": "sogclr", "tau_max": "x"}, num_samples=8)
    with pytest.raises(UsageError, match="embed_dim"):
        build_loss({"name": "isogclr_new", "temp_net": True}, num_samples=8)


@pytest.mark.parametrize("name", ["isogclr", "isogclr_new_v2"])
def test_save_load_round_trip_continues_the_same_trajectory(name):
    steps = list(batches(0, 6))
    first = build_loss({"name": name, "eta_init": 0.01}, num_samples=12)
    for epoch, x, t, idx in steps[:3]:
        first(x, t, idx, epoch=epoch)
    saved = roundtrip(first.state_dict())
    second = build_loss({"name": name, "eta_init": 0.01}, num_samples=12)
    second.load_state_dict(saved)
    for epoch, x, t, idx in steps[3:]:
        a = first(x, t, idx, epoch=epoch)
        b = second(x, t, idx, epoch=epoch)
        assert a.loss.item() == b.loss.item() and a.stats == b.stats
    for key, value in first.state.tensors.items():
        assert torch.equal(value, second.state.tensors[key]), key
    assert not torch.equal(first.state.tensors["tau_I"], torch.full((12,), 0.01))  # τ really moved
    if name == "isogclr_new_v2":
        log_u_pos = first.state.tensors["log_u_pos"].item()
        assert math.isfinite(log_u_pos) and second.state.tensors["log_u_pos"].item() == log_u_pos
        assert set(saved["_extra_state"]["scalars"]) == {"log_u_pos"}


def test_round_trip_keeps_learnable_temperature_and_network():
    first = build_loss({"name": "isogclr_new", "temp_net": True, "temp_net_prototypes": 4}, num_samples=12, embed_dim=5)
    fast = build_loss({"name": "fastclip_v3", "temperature": 0.05}, num_samples=12)
    with torch.no_grad():
        first.temp_net_image.out.weight.add_(0.3)
        fast.theta.fill_(2.0)
    second = build_loss(
        {"name": "isogclr_new", "temp_net": True, "temp_net_prototypes": 4}, num_samples=12, embed_dim=5
    )
    second.load_state_dict(roundtrip(first.state_dict()))
    assert torch.equal(second.temp_net_image.out.weight, first.temp_net_image.out.weight)
    fast2 = build_loss({"name": "fastclip_v3"}, num_samples=12)
    fast2.load_state_dict(roundtrip(fast.state_dict()))
    assert fast2.theta.item() == 2.0


def test_loading_state_for_another_dataset_size_needs_reset():
    loss_fn = build_loss({"name": "sogclr"}, num_samples=12)
    for epoch, x, t, idx in batches(1, 2):
        loss_fn(x, t, idx, epoch=epoch)
    saved = roundtrip(loss_fn.state_dict())
    other = build_loss({"name": "sogclr"}, num_samples=20)
    with pytest.raises(ResumeError, match=r"N = 12 .* N = 20") as err:
        other.load_state_dict(saved)
    assert err.value.exit_code == 5 and "\n" not in str(err.value) and "reset_loss_state" in str(err.value)
    other.load_state_dict(saved, reset=True)
    assert other.state.tensors["log_u_I"].shape == (20,) and bool(torch.isneginf(other.state.tensors["log_u_I"]).all())
    with pytest.raises(ResumeError, match="belongs to loss 'sogclr'"):
        build_loss({"name": "isogclr"}, num_samples=12).load_state_dict(saved)


def test_state_of_another_layout_cannot_resume():
    with_net = build_loss(
        {"name": "isogclr_new", "temp_net": True, "temp_net_prototypes": 4}, num_samples=6, embed_dim=3
    )
    buffers = build_loss({"name": "isogclr_new"}, num_samples=6)
    with pytest.raises(ResumeError, match="columns") as err:
        buffers.load_state_dict(roundtrip(with_net.state_dict()), strict=False)
    assert err.value.exit_code == 5
    with pytest.raises(ResumeError, match="columns"):
        with_net.load_state_dict(roundtrip(buffers.state_dict()))
    fastclip = build_loss({"name": "fastclip_v3"}, num_samples=6)
    sd = roundtrip(fastclip.state_dict())
    del sd["theta"]
    with pytest.raises(ResumeError, match="does not match this loss configuration.*theta"):
        fastclip.load_state_dict(sd)


@pytest.mark.parametrize(
    "name", ["clip", "sogclr", "isogclr", "isogclr_new_v2", "fastclip_v3", "siglip", "dcl", "cyclip"]
)
def test_non_finite_values_stop_the_step(name):
    loss_fn = build_loss({"name": name}, num_samples=12)
    steps = list(batches(2, 2))
    epoch, x, t, idx = steps[0]
    loss_fn(x, t, idx, epoch=epoch)
    before = {k: v.clone() for k, v in getattr(getattr(loss_fn, "state", None), "tensors", {}).items()}
    _, x, t, idx = steps[1]
    x = x.clone()
    x[2, 0] = float("nan")
    with pytest.raises(ClipctlError, match=rf"loss {name}: non-finite .* at epoch 3, step 41"):
        loss_fn(x, t, idx, epoch=3, step=41)
    for key, value in before.items():
        assert torch.equal(value, loss_fn.state.tensors[key]), f"{key} changed by a failed step"


def test_inputs_are_checked():
    loss_fn = build_loss({"name": "sogclr"}, num_samples=4)
    x = F.normalize(torch.randn(3, 4), dim=1)
    with pytest.raises(UsageError, match="out of range"):
        loss_fn(x, x, torch.tensor([0, 1, 4]))
    with pytest.raises(UsageError, match="equal shape"):
        loss_fn(x, x[:2], torch.tensor([0, 1, 2]))
    with pytest.raises(UsageError, match="index"):
        loss_fn(x, x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(UsageError, match="negatives"):
        loss_fn(x[:1], x[:1], torch.tensor([0]))


def test_duplicate_indices_last_write_wins():
    idx = torch.tensor([3, 1, 3, 0, 1, 3])
    assert last_occurrence(idx).tolist() == [5, 4, 5, 3, 4, 5]
    loss_fn = build_loss({"name": "sogclr"}, num_samples=5)
    gen = torch.Generator().manual_seed(4)
    x, t = normalized(gen, 6, 4).float(), normalized(gen, 6, 4).float()
    loss_fn(x, t, idx, epoch=0)
    single = build_loss({"name": "sogclr"}, num_samples=6)
    single(x, t, torch.arange(6), epoch=0)
    for pos, i in ((5, 3), (4, 1), (3, 0)):
        assert loss_fn.state.tensors["log_u_I"][i] == single.state.tensors["log_u_I"][pos]


def test_state_lives_outside_module_buffers_and_on_cpu_when_asked():
    loss_fn = build_loss({"name": "isogclr", "state_device": "cpu"}, num_samples=10)
    assert list(loss_fn.buffers()) == [] and list(loss_fn.parameters()) == []
    x = F.normalize(torch.randn(4, 3), dim=1)
    loss_fn(x, x.flip(0), torch.arange(4))
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in loss_fn.state.tensors.values())


def test_gamma_schedules():
    assert gamma_at(0, "constant", 0.8, 0.2, 15) == 1.0
    assert gamma_at(3, "constant", 0.8, 0.2, 15) == 0.8
    assert gamma_at(0, "cosine", 0.8, 0.2, 10) == 1.0
    assert gamma_at(5, "cosine", 0.8, 0.2, 10) == pytest.approx(0.6)
    assert gamma_at(10, "cosine", 0.8, 0.2, 10) == 0.2 and gamma_at(12, "cosine", 0.8, 0.2, 10) == 0.2


def test_eta_schedules_and_their_horizon():
    assert eta_at(7, "const", 0.03, None) == 0.03
    assert eta_at(0, "cosine", 0.03, 10) == pytest.approx(0.03)
    assert eta_at(5, "cosine", 0.03, 10) == pytest.approx(0.015)
    assert eta_at(10, "cosine", 0.03, 10) == pytest.approx(0.0, abs=1e-12)
    assert eta_at(5, "exp", 0.03, 10) == pytest.approx(0.003)
    loss_fn = build_loss({"name": "isogclr", "eta_schedule": "cosine"}, num_samples=4)
    x = F.normalize(torch.randn(4, 3), dim=1)
    with pytest.raises(UsageError, match="total_epochs"):
        loss_fn(x, x.flip(0), torch.arange(4), epoch=1)
    loss_fn.set_total_epochs(4)
    assert loss_fn(x, x.flip(0), torch.arange(4), epoch=2).stats["eta"] == pytest.approx(0.015)


def test_temperature_network_stays_in_its_box_and_trains_only_itself():
    cfg = parse_loss_config(
        {
            "name": "isogclr_new",
            "temp_net": True,
            "temp_net_prototypes": 6,
            "tau_min": 0.01,
            "tau_max": 0.1,
            "tau_init": 0.03,
        }
    )
    loss_fn = build_loss(cfg, num_samples=8, embed_dim=4)
    x = F.normalize(torch.randn(8, 4), dim=1).requires_grad_(True)
    t = F.normalize(torch.randn(8, 4), dim=1)
    tau = loss_fn.temp_net_image(x)
    assert torch.allclose(tau, torch.full((8,), 0.03), atol=1e-6)
    with torch.no_grad():
        loss_fn.temp_net_image.out.weight.normal_(0, 50.0)
    tau = loss_fn.temp_net_image(x)
    assert bool(((tau >= 0.01) & (tau <= 0.1)).all()) and tau.std() > 0
    optimizer = torch.optim.AdamW(loss_fn.param_groups(1e-2))
    before = [p.detach().clone() for p in loss_fn.parameters()]
    out = loss_fn(x, t, torch.arange(8), epoch=0)
    out.loss.backward()
    assert all(p.grad is not None for p in loss_fn.parameters())
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, loss_fn.parameters()))
    assert set(out.stats) >= {"log_u_I", "log_u_T", "gcl_I", "tau_T_min", "tau_I_max", "tau_grad_I"}
