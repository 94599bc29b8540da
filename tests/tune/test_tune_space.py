"""Search spaces, canonicalisation, the skopt wrapper's replay determinism, invalid spaces -> exit 2."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.tune_fakes import write_recipes

from clipctl.errors import UsageError
from clipctl.tune.space import CatDim, IntDim, RealDim, SearchSpace
from clipctl.tune.strategies import GridSearch, SkoptSearch

SPACE = {
    "loss.name": ["sogclr", "isogclr_new"],
    "optim.lr": {"low": 1e-4, "high": 1e-2, "prior": "log-uniform"},
    "sched.warmup_epochs": {"low": 0, "high": 5, "type": "int"},
    "loss.rho_I": {"low": 1.0, "high": 10.0},
}


def test_space_kinds_and_round_trip():
    space = SearchSpace.from_toml(SPACE, "t.toml")
    assert space.dims == (
        CatDim("loss.name", ("sogclr", "isogclr_new")),
        RealDim("optim.lr", 1e-4, 1e-2, True),
        IntDim("sched.warmup_epochs", 0, 5),
        RealDim("loss.rho_I", 1.0, 10.0),
    )
    assert SearchSpace.from_toml(space.to_toml(), "again") == space
    point = space.point([np.str_("sogclr"), np.float64(3e-4), np.int64(2), np.float64(4.5)])
    assert point == {"loss.name": "sogclr", "optim.lr": 3e-4, "sched.warmup_epochs": 2, "loss.rho_I": 4.5}
    assert all(type(v) in (str, float, int) for v in point.values())


def test_inapplicable_loss_keys_are_canonicalised():
    space = SearchSpace.from_toml(SPACE, "t.toml")
    point = {"loss.name": "sogclr", "optim.lr": 3e-4, "sched.warmup_epochs": 2, "loss.rho_I": 4.5}
    told, params = space.canonicalise(point, default_loss="sogclr")
    assert told["loss.rho_I"] == 1.0 and "loss.rho_I" not in params  # sogclr does not read rho_I
    told, params = space.canonicalise({**point, "loss.name": "isogclr_new"}, default_loss="sogclr")
    assert told["loss.rho_I"] == params["loss.rho_I"] == 4.5


def test_grid_needs_lists():
    space = SearchSpace.from_toml({"optim.name": ["adamw", "radam"], "optim.lr": [1e-4, 2e-4]}, "t.toml")
    assert len(space.grid("t.toml")) == 4
    with pytest.raises(UsageError, match='tune.space.optim.lr: strategy = "grid" needs a list'):
        SearchSpace.from_toml({"optim.lr": {"low": 1e-4, "high": 1e-2}}, "t.toml").grid("t.toml")


@pytest.mark.parametrize(
    "table, message",
    [
        ({}, "is empty"),
        ({"optim.lr": []}, "empty list"),
        ({"optim.lr": {"low": 1e-2, "high": 1e-4}}, "must be below high"),
        ({"optim.lr": {"low": 0.0, "high": 1e-2, "prior": "log-uniform"}}, "low > 0"),
        ({"optim.lr": "fast"}, "expected a list of values"),
        ({"optim.name": ["adamw", "adamw"]}, "repeated values"),
    ],
)
def test_invalid_spaces_are_usage_errors(table, message):
    with pytest.raises(UsageError, match=message):
        SearchSpace.from_toml(table, "t.toml")


def _drive(search):
    """A fixed ask/tell sequence (single asks, a batch, an ask while a point is pending); every point."""
    proposed = []

    def tell(points):
        proposed.extend(points)
        for p in points:
            search.tell(p, -abs(np.log10(p["optim.lr"]) + 3.0))

    for _ in range(3):
        tell(search.ask(1, []))
    tell(search.ask(2, []))
    held = search.ask(1, [])
    tell(held + search.ask(1, held))
    return proposed


def test_skopt_replay_is_exact_with_batches_and_pending_points():
    space = SearchSpace.from_toml(
        {"optim.lr": {"low": 1e-4, "high": 1e-2, "prior": "log-uniform"}, "optim.name": ["adamw", "radam"]}, "t.toml"
    )
    first = _drive(SkoptSearch(space, n_initial=2, seed=5))
    assert first == _drive(SkoptSearch(space, n_initial=2, seed=5))
    assert first[-1] != first[-2]  # the point asked while another was pending differs from it


def test_grid_search_hands_out_points_in_order():
    grid = GridSearch([{"optim.lr": 1e-4}, {"optim.lr": 2e-4}, {"optim.lr": 3e-4}])
    assert grid.ask(2, []) == [{"optim.lr": 1e-4}, {"optim.lr": 2e-4}]
    assert grid.ask(2, []) == [{"optim.lr": 3e-4}]
    assert grid.ask(1, []) == []


@pytest.mark.parametrize(
    "space, message",
    [
        ("", "[tune.space] is empty"),
        ('"optim.lr" = { low = 1e-2, high = 1e-4 }', "must be below high"),
        ('"optim.lrr" = [1e-4]', "not a recipe key; did you mean optim.lr?"),
    ],
)
def test_cli_rejects_empty_or_invalid_space(tmp_path, run_cli, space, message):
    path = write_recipes(tmp_path, f'[tune]\nbase = "base.toml"\nphase = 1\n[tune.space]\n{space}\n')
    code, _, err = run_cli("tune", "--recipe", path, "--study", tmp_path / "study")
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "study").exists()
