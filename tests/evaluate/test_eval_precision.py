"""The float32 guard of exact evaluation works whichever API enabled TF32, and restores it."""

from __future__ import annotations

import pytest
import torch

from clipctl.evaluate.exact import ieee_float32_matmul

MATMUL = torch.backends.cuda.matmul


def enable_legacy_flag() -> None:
    MATMUL.allow_tf32 = True


def enable_matmul_precision() -> None:  # what Accelerate does with a dynamo backend
    torch.set_float32_matmul_precision("high")


def enable_new_api() -> None:
    MATMUL.fp32_precision = "tf32"


@pytest.fixture
def restore_precision():
    before = torch.get_float32_matmul_precision()
    yield
    for backend in (MATMUL, torch.backends.mkldnn.matmul):
        backend.fp32_precision = "none"
    torch.set_float32_matmul_precision(before)
    MATMUL.allow_tf32 = False


@pytest.mark.parametrize("enable", [enable_legacy_flag, enable_matmul_precision, enable_new_api])
def test_guard_gives_ieee_float32_and_restores_tf32(enable, restore_precision):
    enable()
    legacy_readable = enable is not enable_new_api
    with ieee_float32_matmul():
        # The legacy getters make the consistency check torch makes before a cuBLAS matmul: they raise "mix of the
        # legacy and new APIs" when the two views disagree, which a guard switching only one view would cause.
        assert MATMUL.fp32_precision == "ieee" and torch.backends.mkldnn.matmul.fp32_precision == "ieee"
        if legacy_readable:
            assert MATMUL.allow_tf32 is False and torch.get_float32_matmul_precision() == "highest"
        torch.ones(4, 4) @ torch.ones(4, 4)
    assert MATMUL.fp32_precision == "tf32"
    if legacy_readable:
        assert MATMUL.allow_tf32 is True
