"""Device and precision choice for Accelerate, with one-line errors for impossible combinations."""

from __future__ import annotations

import atexit
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs

from clipctl.errors import UsageError
from clipctl.recipe import TrainConfig


def resolve_precision(cfg: TrainConfig, on_cuda: bool) -> str:
    if cfg.precision == "auto":
        return "bf16" if on_cuda and native_bf16() else "no"
    if cfg.precision == "fp16" and not on_cuda:
        raise UsageError(
            "train.precision = 'fp16': fp16 mixed precision needs a CUDA device; on this machine use 'bf16' or 'no'"
        )
    return cfg.precision


def native_bf16() -> bool:
    """bf16 tensor cores (compute capability 8.0, Ampere, and later). `torch.cuda.is_bf16_supported()` also
    counts V100/T4, where bf16 is emulated and slower than float32."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def build_accelerator(cfg: TrainConfig) -> Accelerator:
    """Accelerate picks up torchrun / `accelerate launch` process groups; clipctl shards data itself.

    `train.deterministic` needs cuBLAS's fixed workspace, set before the first CUDA matmul (older torch raises
    without it); a value the user exported wins.
    """
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("train.device = 'cuda': no CUDA device visible; use train.device = 'auto' or 'cpu'")
    if cfg.device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("train.device = 'mps': no Apple GPU visible; use train.device = 'auto' or 'cpu'")
    use_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    precision = resolve_precision(cfg, on_cuda=not use_cpu and torch.cuda.is_available())
    _forget_another_setup(use_cpu, precision)
    accelerator = Accelerator(
        cpu=use_cpu,
        mixed_precision=precision,
        dataloader_config=DataLoaderConfiguration(split_batches=False, dispatch_batches=False),
        # rank 0 evaluates while the others wait in a collective; NCCL's 10-minute default can abort them all
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.dist_timeout_s))],
    )
    if _in_process_group():
        atexit.unregister(destroy_process_groups)  # once per process, however many runs it trains
        atexit.register(destroy_process_groups)
    return accelerator


def _forget_another_setup(use_cpu: bool, precision: str) -> None:
    """Accelerate keeps one state per process and refuses a second precision in it, so a script or notebook that
    trains a float32 run and then a bf16 one would fail: a single process starts afresh. A launched multi-process
    job keeps its state, which holds its process group."""
    state = AcceleratorState._shared_state
    if not state or _in_process_group():
        return
    if state.get("_mixed_precision") != precision or state.get("_cpu") != use_cpu:
        AcceleratorState._reset_state(reset_partial_state=True)


def destroy_process_groups() -> None:
    """Tear the process groups down at exit while the interpreter is still whole: left to finalisation, gloo's
    worker threads can abort the process ("terminate called without an active exception") after a finished run.
    Not after each run: a script may train several in one launch, and Accelerate keeps its state for them."""
    if _in_process_group():
        dist.destroy_process_group()


def _in_process_group() -> bool:
    return dist.is_available() and dist.is_initialized()
