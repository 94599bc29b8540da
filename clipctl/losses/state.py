"""Per-sample loss state: one float32 matrix (N, k) of named columns indexed by dataset index, plus a
few scalars.

One matrix instead of k vectors makes a step's read and write a single gather/scatter of k contiguous
floats per sample. The state is replicated: every rank holds all N rows and writes the same gathered
updates, so any rank's copy is the checkpoint. It lives on the training device (`state_device = "auto"`,
moved there on first use) or in host memory (`"cpu"`, for very large N). It is deliberately NOT an
nn.Module buffer, so `loss.to(device)` moves only the learnable parameters and never a huge state.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def last_occurrence(index: Tensor) -> Tensor:
    """For each position, the position of the LAST occurrence of the same index (fixed shapes, no sync).

    Writing `values[last_occurrence(idx)]` at `idx` gives every duplicate the same value, so the
    scatter is deterministic on any device (last write wins by construction, not by scheduling).
    """
    order = torch.argsort(index, stable=True)
    ordered = index[order]
    last_in_order = torch.searchsorted(ordered, ordered, right=True) - 1
    source = torch.empty_like(order)
    source[order] = order[last_in_order]
    return source


class PerSampleState:
    """Columns (e.g. s_I, b_I, tau_I, m_I, ...) of an (N, k) float32 matrix, and named float32 scalars."""

    def __init__(self, num_samples: int, columns: dict[str, float], scalars: dict[str, float], device_mode: str) -> None:
        self.num_samples = int(num_samples)
        self.device_mode = device_mode
        self.columns = tuple(columns)
        self._column_init = torch.tensor([columns[c] for c in self.columns], dtype=torch.float32)
        self._scalar_init = dict(scalars)
        self.reset()

    def reset(self, device: torch.device | str = "cpu") -> None:
        """Initial values: s = 0, b = 0, m = 0, tau = tau_init, ... (as given at construction)."""
        self.values = self._column_init.to(device).repeat(self.num_samples, 1)
        self.scalars = {n: torch.tensor(v, dtype=torch.float32, device=device) for n, v in self._scalar_init.items()}

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def tensors(self) -> dict[str, Tensor]:
        """Read-only view by name: each column (N,) and each scalar."""
        return {**{c: self.values[:, i] for i, c in enumerate(self.columns)}, **self.scalars}

    def place(self, compute_device: torch.device) -> None:
        """Move to the training device on first use (`auto`); `cpu` keeps host memory."""
        target = torch.device("cpu") if self.device_mode == "cpu" else compute_device
        if self.device != target:
            self.values = self.values.to(target)
            self.scalars = {n: t.to(target) for n, t in self.scalars.items()}

    def read(self, index: Tensor, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        """Current rows at `index` as named (b,) columns, cast for computation (one gather)."""
        rows = self.values[index.to(self.device)].to(device=device, dtype=dtype)
        return {c: rows[:, i] for i, c in enumerate(self.columns)}

    def scalar(self, name: str, dtype: torch.dtype, device: torch.device) -> Tensor:
        return self.scalars[name].to(device=device, dtype=dtype)

    @torch.no_grad()
    def write(self, index: Tensor, rows: Tensor) -> None:
        """Store (B, k) rows at `index` (one scatter); duplicate indices: the last row wins."""
        where = index.to(self.device)
        rows = rows.to(device=self.device, dtype=torch.float32)
        self.values[where] = rows[last_occurrence(where)]

    @torch.no_grad()
    def set_scalar(self, name: str, value: Tensor) -> None:
        self.scalars[name].copy_(value.reshape(()))

    def payload(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "values": self.values, "scalars": dict(self.scalars)}

    def incompatibility(self, payload: dict[str, Any]) -> str | None:
        """Why saved state cannot be loaded here (None: it can)."""
        saved_n = payload.get("num_samples")
        if saved_n != self.num_samples:
            return f"per-sample state was saved for N = {saved_n} samples but this run has N = {self.num_samples}"
        values, scalars = payload.get("values"), payload.get("scalars")
        if (
            list(payload.get("columns", [])) != list(self.columns)
            or not isinstance(values, Tensor)
            or values.shape != self.values.shape
            or not isinstance(scalars, dict)
            or set(scalars) != set(self.scalars)
        ):
            return f"the saved state has columns {payload.get('columns')} but this loss keeps {list(self.columns)}"
        return None

    def load_payload(self, payload: dict[str, Any]) -> None:
        """Load compatible saved state (see `incompatibility`) onto the current state device."""
        device = self.device
        self.values = payload["values"].detach().to(device=device, dtype=torch.float32).clone()
        self.scalars = {n: payload["scalars"][n].detach().to(device=device, dtype=torch.float32).clone().reshape(()) for n in self.scalars}
