"""Per-sample loss state: one float32 matrix (rows, k) of named columns indexed by dataset index, plus a
few scalars.

One matrix instead of k vectors makes a step's read and write a single gather/scatter of k contiguous
floats per sample. It lives on the training device (`state_device = "auto"`, moved there on first use)
or in host memory (`"cpu"`, for very large N). It is deliberately NOT an nn.Module buffer, so
`loss.to(device)` moves only the learnable parameters and never a huge state.

Layout over K processes (`loss.state_sharding`):
- `replicated` (default): every rank holds all N rows and writes the same gathered updates, so any
  rank's copy is the checkpoint.
- `sharded`: sample i lives on rank i mod K at local row i // K, so a rank holds ceil(N/K) rows (a rank
  that owns one sample fewer keeps one unused padding row, so all shards have one shape). Modulo rather
  than contiguous ranges: owner and row are one `%` and one `//` with no boundary table, and any batch
  of consecutive indices (an unshuffled sampler, a prefix subset) still spreads evenly over the owners,
  where contiguous ranges would send it all to one rank.

A sharded step, with b = B/K local rows and k columns:
1. Requests cost nothing: every rank already has the global batch's B indices (the loss all-gathers them
   for its layout), so each owner knows which of its rows each rank needs, in which order.
2. Fetch: one all-to-all (`distributed.exchange`); owner o sends rank q the rows of q's indices that o
   owns. Per rank about b·(K−1)/K·k·4 bytes go out and as many come in (its own rows are a local copy).
3. Write-back adds nothing: the loss already all-gathers the step's B updated rows with its other
   per-row results (loss value and stats need them on every rank); each owner keeps the rows it owns.
So sharding adds under b·k·4 bytes each way per rank per step, O(B) and independent of N, and saves
(N − ceil(N/K))·k·4 bytes on every rank (bench/state_sharding.py measures both).

Checkpoint: `payload()` holds the full (N, k) matrix in sample order, the replicated format, so a state
saved under any K and either layout resumes under any other. A sharded state is gathered onto rank 0
(one `gather`; the other ranks' payload holds no rows): one file, written by rank 0 as everything else,
at the price of a transient full copy on rank 0 (CC3M isogclr: 106 MB; LAION-400M: 12.8 GB, twice that
while it is assembled). Loading keeps the rows this rank owns.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from clipctl.errors import UsageError
from clipctl.losses import distributed as D


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
    """Columns (e.g. log_u_I, tau_I, m_I, ...) of a (rows, k) float32 matrix, and named float32 scalars.

    `sharding` is `replicated` (rows = N) or `sharded` (rows = ceil(N/K) for the world size K at
    construction: build the loss after the process group exists). Scalars are always replicated.
    """

    def __init__(
        self,
        num_samples: int,
        columns: dict[str, float],
        scalars: dict[str, float],
        device_mode: str,
        sharding: str = "replicated",
    ) -> None:
        self.num_samples = int(num_samples)
        self.device_mode = device_mode
        self.columns = tuple(columns)
        self.sharded = sharding == "sharded"
        self.shards = D.world_size() if self.sharded else 1
        self.rank = D.rank() if self.shards > 1 else 0
        self.rows = -(-self.num_samples // self.shards)
        self._comm_device: torch.device | None = None
        self._column_init = torch.tensor([columns[c] for c in self.columns], dtype=torch.float32)
        self._scalar_init = dict(scalars)
        self.reset()

    def reset(self, device: torch.device | str = "cpu") -> None:
        """Initial values: log u = −∞ (unvisited), m = 0, tau = tau_init, ... (as given at construction)."""
        self.values = self._column_init.to(device).repeat(self.rows, 1)
        self.scalars = {n: torch.tensor(v, dtype=torch.float32, device=device) for n, v in self._scalar_init.items()}

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def tensors(self) -> dict[str, Tensor]:
        """Read-only view by name: each column of this rank's rows (N, or ceil(N/K) sharded) and each scalar."""
        return {**{c: self.values[:, i] for i, c in enumerate(self.columns)}, **self.scalars}

    def place(self, compute_device: torch.device) -> None:
        """Move to the training device on first use (`auto`); `cpu` keeps host memory. Collectives of the
        sharded state run on `compute_device` (NCCL needs device tensors)."""
        if self.sharded and D.world_size() != self.shards:
            raise UsageError(
                f"per-sample state was sharded over {self.shards} process(es) but this step runs on {D.world_size()}; "
                "build the loss after torch.distributed is initialised"
            )
        self._comm_device = compute_device
        target = torch.device("cpu") if self.device_mode == "cpu" else compute_device
        if self.device != target:
            self.values = self.values.to(target)
            self.scalars = {n: t.to(target) for n, t in self.scalars.items()}

    def read(self, index: Tensor, index_all: Tensor, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        """Current rows of this rank's `index` as named (b,) columns, cast for computation; `index_all` is
        the global batch's indices in rank order (a sharded state fetches the rows from their owners)."""
        rows = self._fetch(index_all) if self.shards > 1 else self.values[index.to(self.device)]
        rows = rows.to(device=device, dtype=dtype)
        return {c: rows[:, i] for i, c in enumerate(self.columns)}

    def _fetch(self, index_all: Tensor) -> Tensor:
        """This rank's b rows from their owners in one all-to-all (module docstring, step 2)."""
        K, me = self.shards, self.rank
        where = index_all.to(self.device)
        owner = (where % K).view(K, -1)  # owner[q, j]: who holds rank q's j-th row
        counts = torch.stack([(owner == me).sum(dim=1), torch.bincount(owner[me], minlength=K)]).tolist()
        send = self.values[where[owner.reshape(-1) == me] // K]  # grouped by requesting rank, in its order
        received = D.exchange(send.to(self._comm_device or self.device), counts[0], counts[1])
        rows = torch.empty_like(received)
        rows[torch.argsort(owner[me], stable=True).to(rows.device)] = received  # grouped by owner -> local order
        return rows

    def scalar(self, name: str, dtype: torch.dtype, device: torch.device) -> Tensor:
        return self.scalars[name].to(device=device, dtype=dtype)

    @torch.no_grad()
    def write(self, index: Tensor, rows: Tensor) -> None:
        """Store the global batch's (B, k) rows at `index` (one scatter; a sharded rank keeps the rows it
        owns); duplicate indices: the last row wins."""
        where = index.to(self.device)
        rows = rows.to(device=self.device, dtype=torch.float32)[last_occurrence(where)]
        if self.shards > 1:
            mine = where % self.shards == self.rank
            where, rows = where[mine], rows[mine]
        self.values[where // self.shards] = rows

    @torch.no_grad()
    def set_scalar(self, name: str, value: Tensor) -> None:
        self.scalars[name].copy_(value.reshape(()))

    def full_values(self) -> Tensor | None:
        """The (N, k) matrix in sample order: a replicated rank's own; a sharded state's gathered on rank 0
        (None on the other ranks). Sharded, every rank must call it (a collective)."""
        if self.shards == 1:
            return self.values
        parts = D.gather_to_rank0(self.values.to(self._comm_device or self.device))
        if parts is None:
            return None
        # shard r's row j is sample j·K + r: interleave the shards, drop the padding rows past N
        return torch.stack(parts, dim=1).reshape(-1, len(self.columns))[: self.num_samples].to(self.device)

    def payload(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "values": self.full_values(), "scalars": dict(self.scalars)}

    def incompatibility(self, payload: dict[str, Any]) -> str | None:
        """Why saved state cannot be loaded here (None: it can)."""
        saved_n = payload.get("num_samples")
        if saved_n != self.num_samples:
            return f"per-sample state was saved for N = {saved_n} samples but this run has N = {self.num_samples}"
        values, scalars = payload.get("values"), payload.get("scalars")
        if values is None and list(payload.get("columns", [])) == list(self.columns):
            return (
                "the saved per-sample state holds no rows: it was taken on a rank other than 0 of a sharded run; "
                "save rank 0's"
            )
        if (
            list(payload.get("columns", [])) != list(self.columns)
            or not isinstance(values, Tensor)
            or values.shape != (self.num_samples, len(self.columns))
            or not isinstance(scalars, dict)
            or set(scalars) != set(self.scalars)
        ):
            return f"the saved state has columns {payload.get('columns')} but this loss keeps {list(self.columns)}"
        return None

    def load_payload(self, payload: dict[str, Any]) -> None:
        """Load compatible saved state (see `incompatibility`) onto the current state device, keeping the
        rows this rank owns: saved under any world size and layout, it re-shards here."""
        device = self.device
        own = payload["values"].detach()[self.rank :: self.shards]
        self.values = self._column_init.to(device).repeat(self.rows, 1)  # a padding row keeps the initial values
        self.values[: own.shape[0]] = own.to(device=device, dtype=torch.float32)
        self.scalars = {
            n: payload["scalars"][n].detach().to(device=device, dtype=torch.float32).clone().reshape(())
            for n in self.scalars
        }
