"""Device and precision for Accelerate: the recipe's, or on `auto` the launcher's (`accelerate launch`,
`accelerate config`), with one-line errors for impossible combinations."""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.tracking import GeneralTracker
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, str_to_bool

from clipctl.console import warn
from clipctl.errors import UsageError
from clipctl.model.cpu_precision import cpu_auto_precision
from clipctl.recipe import TrainConfig

LAUNCH_PRECISION = "ACCELERATE_MIXED_PRECISION"  # `accelerate launch --mixed_precision`, or its `accelerate config`
LAUNCH_CPU = "ACCELERATE_USE_CPU"  # `accelerate launch --cpu`, or its `accelerate config`
LAUNCHER = "accelerate launch / accelerate config"
PRECISIONS = ("no", "bf16", "fp16")


@dataclass(frozen=True)
class Choice:
    """A device or precision setting and where it came from (the dry run and meta.json say both)."""

    value: str
    source: str


def resolve_precision(cfg: TrainConfig, on_cuda: bool, cpu_tower: str | None = None) -> Choice:
    """The recipe's precision; on `auto`, the launcher's (`accelerate launch --mixed_precision`), else `auto_precision`.
    An explicit recipe value wins over the launcher's, with a warning."""
    launched = os.environ.get(LAUNCH_PRECISION)
    if cfg.precision == "auto" and launched is not None:
        choice = Choice(_launched_precision(launched), f"{LAUNCH_PRECISION} ({LAUNCHER})")
    elif cfg.precision == "auto":
        choice = auto_precision(on_cuda, cpu_tower)
    else:
        choice = Choice(cfg.precision, "recipe (train.precision)")
        if launched is not None and launched.lower() != cfg.precision:
            warn(
                f"train.precision = {cfg.precision!r} in the recipe overrides {LAUNCH_PRECISION}={launched} "
                f"({LAUNCHER}); training in {cfg.precision!r} (set train.precision = 'auto' to follow the launcher)"
            )
    if choice.value == "fp16" and not on_cuda:
        where = "train.precision = 'fp16'" if choice.source.startswith("recipe") else f"{LAUNCH_PRECISION}=fp16"
        raise UsageError(f"{where}: fp16 mixed precision needs a CUDA device; on this machine use 'bf16' or 'no'")
    return choice


def auto_precision(on_cuda: bool, cpu_tower: str | None) -> Choice:
    """`auto` without a launcher: bf16 on CUDA with native bf16; on the CPU (`cpu_tower`: the image tower trained
    there), bf16 where the CPU has bf16 matrix instructions and bench/precision.py measured that tower faster in it
    (model/cpu_precision.py); float32 elsewhere. The source says which rule decided."""
    if on_cuda:
        native = native_bf16()
        why = "CUDA device with native bf16" if native else "CUDA device without native bf16 (before compute 8.0)"
        return Choice("bf16" if native else "no", f"auto ({why})")
    if cpu_tower is None:
        return Choice("no", "auto (float32 off the CPU and CUDA)")
    cpu = cpu_auto_precision(cpu_tower)
    return Choice(cpu.value, f"auto ({cpu.reason})")


def _launched_precision(value: str) -> str:
    if value.lower() not in PRECISIONS:
        raise UsageError(
            f"{LAUNCH_PRECISION}={value} ({LAUNCHER}): clipctl trains in {', '.join(PRECISIONS)}; launch with "
            "--mixed_precision bf16 (or no, fp16), or set train.precision in the recipe"
        )
    return value.lower()


def resolve_device(cfg: TrainConfig) -> Choice:
    """CPU, or the accelerator Accelerate picks: the recipe's device; on `auto`, CPU when the launcher asks for it
    (`accelerate launch --cpu`) or no CUDA device is visible. An explicit recipe device wins over the launcher's
    `--cpu`, with a warning."""
    forced_cpu = str_to_bool(os.environ.get(LAUNCH_CPU, "false")) == 1
    if cfg.device == "auto" and forced_cpu:
        return Choice("cpu", f"{LAUNCH_CPU} ({LAUNCHER})")
    if cfg.device == "auto":
        return Choice("accelerator" if torch.cuda.is_available() else "cpu", "auto (CUDA when visible, else cpu)")
    if forced_cpu and cfg.device != "cpu":
        warn(
            f"train.device = {cfg.device!r} in the recipe overrides {LAUNCH_CPU}={os.environ[LAUNCH_CPU]} "
            f"({LAUNCHER}); training on {cfg.device!r} (set train.device = 'auto' to follow the launcher)"
        )
    return Choice("cpu" if cfg.device == "cpu" else "accelerator", "recipe (train.device)")


@dataclass(frozen=True)
class Setup:
    """What the recipe and the launcher decide together, resolved once per run (a conflict warns once)."""

    device: Choice
    precision: Choice

    @property
    def use_cpu(self) -> bool:
        return self.device.value == "cpu"

    def sources(self) -> dict[str, str]:
        """Where each came from, as the dry run and meta.json report it."""
        return {"device_from": self.device.source, "precision_from": self.precision.source}


def resolve_setup(cfg: TrainConfig, image_model: str = "") -> Setup:
    """The device and precision of a run, refusing a device this machine does not have; `image_model` (the recipe's
    image tower) decides `auto` precision on the CPU."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("train.device = 'cuda': no CUDA device visible; use train.device = 'auto' or 'cpu'")
    if cfg.device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("train.device = 'mps': no Apple GPU visible; use train.device = 'auto' or 'cpu'")
    device = resolve_device(cfg)
    on_cuda = device.value != "cpu" and torch.cuda.is_available()
    cpu_tower = image_model if device.value == "cpu" else None
    return Setup(device, resolve_precision(cfg, on_cuda=on_cuda, cpu_tower=cpu_tower))


def native_bf16() -> bool:
    """bf16 tensor cores (compute capability 8.0, Ampere, and later). `torch.cuda.is_bf16_supported()` also
    counts V100/T4, where bf16 is emulated and slower than float32."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def build_accelerator(
    cfg: TrainConfig, setup: Setup | None = None, log_with: list[GeneralTracker] | None = None
) -> Accelerator:
    """Accelerate picks up torchrun / `accelerate launch` process groups; clipctl shards data itself.

    `train.deterministic` needs cuBLAS's fixed workspace, set before the first CUDA matmul (older torch raises
    without it); a value the user exported wins. Accelerate itself would let the launcher's `--cpu` win over the
    recipe's device, so it is hidden from it while the accelerator is made when the recipe names a device.
    """
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    setup = setup or resolve_setup(cfg)
    _forget_another_setup(setup.use_cpu, setup.precision.value)
    with _launcher_cpu_hidden(cfg.device != "auto"):
        accelerator = Accelerator(
            cpu=setup.use_cpu,
            mixed_precision=setup.precision.value,
            log_with=log_with or None,
            dataloader_config=DataLoaderConfiguration(split_batches=False, dispatch_batches=False),
            # rank 0 evaluates while the others wait in a collective; NCCL's 10-minute default can abort them all
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.dist_timeout_s))],
        )
    if _in_process_group():
        atexit.unregister(destroy_process_groups)  # once per process, however many runs it trains
        atexit.register(destroy_process_groups)
    return accelerator


@contextlib.contextmanager
def _launcher_cpu_hidden(hide: bool) -> Iterator[None]:
    """ACCELERATE_USE_CPU out of the environment while Accelerate reads it, when the recipe has decided."""
    saved = os.environ.pop(LAUNCH_CPU, None) if hide else None
    try:
        yield
    finally:
        if saved is not None:
            os.environ[LAUNCH_CPU] = saved


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
