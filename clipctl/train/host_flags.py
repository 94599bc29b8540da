"""Agreeing on a yes/no across processes without touching the accelerator."""

from __future__ import annotations

import torch
import torch.distributed as dist


class HostFlags:
    """`any(flag)`: True on every rank when it is True on one, reduced over a gloo group on the host.

    The stop check runs every step; over NCCL it would need a device tensor and a device-to-host read, which
    makes the host wait for the whole queued step. Build it on every rank at the same point (a new group is
    a collective).
    """

    def __init__(self) -> None:
        self.group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    def any(self, flag: bool) -> bool:
        value = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        return bool(value.item())
