"""Process-group helpers for the losses: every loss sees its LOCAL batch and gathers the rest itself.

All helpers degrade to the identity with one process or without an initialised process group, so the
losses run unchanged in a plain script, under Accelerate, or under torchrun.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Number of processes in the default group (1 when torch.distributed is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def is_distributed() -> bool:
    return world_size() > 1


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0; the backward keeps other ranks' contributions.

    Rank r's slice of the gathered tensor is used by the loss on EVERY rank, so its gradient is the sum
    of the incoming gradients of all ranks at that slice: all-reduce (sum) the full gradient, then
    return this rank's rows. (Returning only the local incoming gradient would drop the terms that
    other ranks' anchors contribute through this rank's features.)
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rank = dist.get_rank()
        ctx.rows = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return total[start : start + ctx.rows]


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """(b, ...) on each of K ranks -> (K*b, ...) in rank order, differentiable. Equal b on all ranks."""
    if not is_distributed():
        return tensor
    return _AllGatherWithGrad.apply(tensor)


@torch.no_grad()
def all_gather(tensor: Tensor) -> Tensor:
    """Non-differentiable gather of equally shaped tensors, concatenated along dim 0 in rank order."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum over ranks (a copy; the input is untouched)."""
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@torch.no_grad()
def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of `params` over ranks in one collective (what DDP does for the model)."""
    if not is_distributed():
        return
    if all(p.grad is None for p in params):
        return
    for p in params:  # every rank must contribute the same layout to the one flat buffer
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


@torch.no_grad()
def broadcast_parameters(params: list[torch.nn.Parameter]) -> None:
    """Copy rank 0's values into every rank (start all replicas from the same temperature/network)."""
    if not is_distributed():
        return
    for p in params:
        dist.broadcast(p.data, src=0)


@torch.no_grad()
def exchange(send: Tensor, send_counts: list[int], recv_counts: list[int]) -> Tensor:
    """All-to-all of rows: the first send_counts[0] rows of `send` go to rank 0, the next to rank 1, ...;
    returns the rows received, grouped by sending rank (recv_counts[q] from rank q).

    One `all_to_all_single`: NCCL and gloo (torch ≥ 2.x) both implement it, unlike the list form
    `all_to_all`, so the sharded per-sample state has one code path on CPU and GPU.
    """
    recv = send.new_empty((sum(recv_counts), *send.shape[1:]))
    dist.all_to_all_single(recv, send.contiguous(), output_split_sizes=recv_counts, input_split_sizes=send_counts)
    return recv


@torch.no_grad()
def gather_to_rank0(tensor: Tensor) -> list[Tensor] | None:
    """Every rank's equally shaped tensor, in rank order, on rank 0 only (None elsewhere)."""
    parts = [torch.empty_like(tensor) for _ in range(world_size())] if rank() == 0 else None
    dist.gather(tensor.contiguous(), parts, dst=0)
    return parts
