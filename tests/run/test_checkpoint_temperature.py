"""The checkpoint's temperature record: written when the trainer has one, optional for older checkpoints, typed."""

from __future__ import annotations

import pytest
import torch

from clipctl.errors import UsageError
from clipctl.run.checkpoint import load_checkpoint, recorded_temperature, save_checkpoint


def _save(path, **extra):
    save_checkpoint(
        path,
        model_state={"w": torch.zeros(1)},
        recipe_toml="",
        tokenizer_json="{}",
        tokenizer_max_len=8,
        metrics={},
        epoch=0,
        **extra,
    )


def test_the_temperature_round_trips_with_how_it_was_chosen(tmp_path):
    _save(tmp_path / "ckpt.pt", temperature=(0.025, "loss clip: learned τ"))
    assert recorded_temperature(load_checkpoint(tmp_path / "ckpt.pt")) == (0.025, "loss clip: learned τ")


def test_a_checkpoint_without_the_record_still_loads(tmp_path):
    _save(tmp_path / "ckpt.pt")
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert "temperature" not in ckpt and recorded_temperature(ckpt) is None


def test_a_mistyped_record_is_refused_in_one_line(tmp_path):
    _save(tmp_path / "ckpt.pt", temperature=(0.02, "x"))
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    ckpt["temperature"] = "0.02"
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(UsageError, match="field 'temperature' is a str, expected float"):
        load_checkpoint(tmp_path / "ckpt.pt")


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_an_unusable_temperature_counts_as_none(value):
    assert recorded_temperature({"temperature": value, "temperature_source": "x"}) is None
