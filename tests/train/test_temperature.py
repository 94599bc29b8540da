"""The temperature a checkpoint records for inference, per kind of loss (see clipctl/train/temperature.py)."""

from __future__ import annotations

import math

import pytest
import torch

from clipctl.losses import build_loss
from clipctl.train.temperature import inference_temperature


def _loss(**table):
    return build_loss(table, num_samples=6, total_epochs=2, embed_dim=8)


@pytest.mark.parametrize(
    ("table", "tau", "how"),
    [
        ({"name": "clip", "temperature": 0.03}, 0.03, "loss clip: fixed τ"),
        ({"name": "clip", "temperature": 0.07, "learnable_temp": True}, 0.07, "loss clip: learned τ"),
        ({"name": "sogclr", "temperature": 0.02}, 0.02, "loss sogclr: loss.temperature"),
        ({"name": "fastclip_v3", "temperature": 0.04}, 0.04, "loss fastclip_v3: learned τ"),
    ],
)
def test_one_temperature_for_all_samples(table, tau, how):
    recorded, source = inference_temperature(_loss(**table))
    assert recorded == pytest.approx(tau, rel=1e-6) and source == how


def test_a_learned_temperature_is_recorded_as_it_is_now():
    loss = _loss(name="fastclip_v3", temperature=0.04)
    with torch.no_grad():
        loss.theta.fill_(-math.log(0.2))
    assert inference_temperature(loss)[0] == pytest.approx(0.2, rel=1e-6)


@pytest.mark.parametrize("name", ["isogclr", "isogclr_new", "isogclr_new_v2"])
def test_per_sample_temperatures_average_over_visited_samples(name):
    loss = _loss(name=name, tau_init=0.05, tau_min=0.01, tau_max=0.5)
    assert inference_temperature(loss) == (0.05, f"loss {name}: tau_init (no sample visited yet)")
    column = {c: i for i, c in enumerate(loss.state.columns)}
    values = loss.state.values
    values[[1, 4], column["log_u_I"]] = 0.0  # samples 1 and 4 visited; the other four keep τ = tau_init
    values[[1, 4], column["log_u_T"]] = 0.0
    values[[1, 4], column["tau_I"]] = torch.tensor([0.1, 0.2])
    values[[1, 4], column["tau_T"]] = torch.tensor([0.3, 0.4])
    tau, how = inference_temperature(loss)
    assert tau == pytest.approx(0.25) and how == f"loss {name}: mean of the per-sample τ_I and τ_T of 2 visited samples"


def test_a_temperature_network_records_tau_init():
    loss = _loss(name="isogclr_new", temp_net=True, tau_init=0.03, tau_min=0.01, tau_max=0.1)
    assert inference_temperature(loss) == (0.03, "tau_init (a temperature network's τ depends on the input)")


def test_a_loss_without_any_temperature_records_none():
    class Plain:
        name = "plain"
        cfg = None

    assert inference_temperature(Plain()) is None
