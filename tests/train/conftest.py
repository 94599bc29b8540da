"""Fixtures every training test shares."""

from __future__ import annotations

import pytest

from clipctl.train.devices import LAUNCH_CPU, LAUNCH_PRECISION


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    """Each test sets the launcher's variables it means; none leaks in from the shell that runs the tests
    (`accelerate launch` exports them, and they decide precision and device on `auto`)."""
    monkeypatch.delenv(LAUNCH_PRECISION, raising=False)
    monkeypatch.delenv(LAUNCH_CPU, raising=False)
