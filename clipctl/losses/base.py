"""What every loss shares: config handling, input checks, the cross-process batch layout, float32
similarities, the NaN guard, optimizer hooks and checkpointable state.

Distributed convention (specs/losses.md "Distributed semantics"): a loss receives the LOCAL batch
(b rows on each of K ranks, global B = K·b), gathers features with a gradient-carrying all-gather and
computes only its local anchors' rows against the global columns. `out.loss` has the value of the
single-process loss on the global batch (identical on every rank) and the gradient K × (this rank's
share), so that after DDP averages the model's gradients over K ranks they equal the single-process
gradient. `reduce_gradients()` applies the same averaging to the loss's own parameters.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clipctl.errors import ClipctlError, ResumeError, UsageError
from clipctl.losses import distributed as D
from clipctl.losses.config import LossConfig


@dataclass
class LossOutput:
    """`loss`: scalar to call backward on; `stats`: floats for logging (same on every rank), empty unless the
    call asked for them (computing them costs a device-to-host transfer)."""

    loss: Tensor
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class Batch:
    """One step's features in computation precision, laid out across processes.

    `x`, `t` are this rank's rows; `x_all`, `t_all` all ranks' rows in rank order (the same tensors when
    K = 1). Local row r is global row `offset + r`, so its positive sits in column `pos[r]`.
    """

    x: Tensor
    t: Tensor
    x_all: Tensor
    t_all: Tensor
    index: Tensor
    index_all: Tensor
    world: int
    offset: int

    @property
    def local_size(self) -> int:
        return self.x.shape[0]

    @property
    def global_size(self) -> int:
        return self.x_all.shape[0]

    @property
    def pos(self) -> Tensor:
        return torch.arange(self.offset, self.offset + self.local_size, device=self.x.device)


def sum_over_ranks(local: Tensor, batch: Batch) -> Tensor:
    """A loss that is a sum of per-row terms, from this rank's share: the value of the sum over all ranks (the
    single-process loss on the global batch, one all-reduce) with the gradient K × this rank's share (module
    docstring). `local` may be a vector of such sums (one per term, for the statistics)."""
    if batch.world == 1:
        return local
    scaled = local * batch.world
    return scaled + (D.all_reduce_sum(local) - scaled).detach()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 at least (τ ≈ 0.01 turns bf16/fp16 rounding of S into large errors in exp); float64 stays."""
    return torch.promote_types(dtype, torch.float32)


class ContrastiveLoss(nn.Module, metaclass=ABCMeta):
    """Base of all losses; subclasses implement `_compute(batch, epoch, step, with_stats)`."""

    name: ClassVar[str] = ""

    def __init__(
        self, cfg: LossConfig, num_samples: int, total_epochs: int | None = None, embed_dim: int | None = None
    ) -> None:
        super().__init__()
        if num_samples < 1:
            raise UsageError(f"build_loss: num_samples = {num_samples}: expected the training set size (>= 1)")
        self.cfg = cfg
        self.num_samples = int(num_samples)
        self.total_epochs = total_epochs
        self.embed_dim = embed_dim
        self._calls = 0
        self._params_synced = False

    def set_total_epochs(self, total_epochs: int) -> None:
        """Run length for schedules that need a horizon (η `cosine`/`exp`)."""
        self.total_epochs = int(total_epochs)

    # ------------------------------------------------------------------------------------- forward

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        index: Tensor,
        epoch: int = 0,
        step: int | None = None,
        stats: bool = True,
    ) -> LossOutput:
        """Loss on the global batch from this rank's features and dataset indices (see module docstring).

        `stats = False` (the trainer's steps between logging steps) skips the logging statistics, so the step's
        only device-to-host transfer is the NaN/inf guard's.
        """
        self._check_inputs(image_features, text_features, index, epoch)
        step = self._calls if step is None else step
        self._calls += 1
        if D.is_distributed() and not self._params_synced:
            D.broadcast_parameters(list(self.parameters()))
        self._params_synced = True
        dtype = compute_dtype(image_features.dtype)
        with torch.autocast(device_type=image_features.device.type, enabled=False):
            batch = self._layout(image_features.to(dtype), text_features.to(dtype), index.to(image_features.device))
            return self._compute(batch, int(epoch), int(step), bool(stats))

    @abstractmethod
    def _compute(self, batch: Batch, epoch: int, step: int, with_stats: bool) -> LossOutput:
        """The loss of one (gathered) batch; each loss family implements it."""

    def _check_inputs(self, x: Tensor, t: Tensor, index: Tensor, epoch: int) -> None:
        if not (isinstance(x, Tensor) and isinstance(t, Tensor) and x.dim() == 2 and x.shape == t.shape):
            shapes = (tuple(getattr(x, "shape", ())), tuple(getattr(t, "shape", ())))
            raise UsageError(
                f"loss {self.name}: image and text features must be (batch, dim) of equal shape, got "
                f"{shapes[0]} and {shapes[1]}"
            )
        if not (x.is_floating_point() and t.is_floating_point()):
            raise UsageError(f"loss {self.name}: features must be floating point, got {x.dtype} and {t.dtype}")
        if not isinstance(index, Tensor) or index.shape != (x.shape[0],) or index.is_floating_point():
            raise UsageError(
                f"loss {self.name}: index must be an integer tensor of shape ({x.shape[0]},), one dataset "
                "index per pair"
            )
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise UsageError(f"loss {self.name}: epoch = {epoch!r}: expected an integer >= 0")

    def _layout(self, x: Tensor, t: Tensor, index: Tensor) -> Batch:
        world = D.world_size()
        if world == 1:
            batch = Batch(x, t, x, t, index, index, 1, 0)
        else:
            sizes = D.all_gather(torch.tensor([x.shape[0]], device=x.device))
            if bool((sizes != x.shape[0]).any()):
                raise UsageError(
                    f"loss {self.name}: local batch sizes differ across processes ({sizes.tolist()}); "
                    "every rank needs the same batch size (drop the last incomplete batch)"
                )
            batch = Batch(
                x,
                t,
                D.all_gather_with_grad(x),
                D.all_gather_with_grad(t),
                index,
                D.all_gather(index),
                world,
                D.rank() * x.shape[0],
            )
        if batch.global_size < 2:
            raise UsageError(
                f"loss {self.name}: a global batch of {batch.global_size} pair has no negatives; use "
                "train.batch_size >= 2"
            )
        return batch

    # ------------------------------------------------------------------------------------- guards

    def _check_finite(self, values: Mapping[str, Tensor], epoch: int, step: int) -> None:
        """Stop the step before any state is written if a loss value, s, b or τ is NaN/inf."""
        names = list(values)
        flags = torch.stack([torch.isfinite(values[n]).all() for n in names]).tolist()
        if not all(flags):
            self._raise_non_finite([n for n, ok in zip(names, flags) if not ok], epoch, step)

    def _raise_non_finite(self, names: list[str], epoch: int, step: int) -> None:
        bad = ", ".join(names)
        raise ClipctlError(
            f"loss {self.name}: non-finite {bad} at epoch {epoch}, step {step}; the step was stopped and "
            "the per-sample state left unchanged; resume from the last checkpoint with a lower optim.lr "
            "(or larger temperature bounds)"
        )

    # ------------------------------------------------------------------------------ optimizer hooks

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups for the loss's own learnable parameters (none by default)."""
        return []

    def reduce_gradients(self) -> None:
        """Average the loss's own parameter gradients over processes (DDP does this for the model)."""
        D.average_gradients([p for p in self.parameters() if p.requires_grad])

    def after_optimizer_step(self) -> None:
        """Project learnable temperatures back into their box (no-op by default)."""

    def reset_state(self) -> None:
        """Forget the per-sample state (a loss that keeps none has nothing to forget)."""

    # ------------------------------------------------------------------------------ checkpointing

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False, reset: bool = False
    ):  # type: ignore[override]
        """Restore parameters and per-sample state; `reset=True` restarts per-sample state saved for
        another dataset size instead of raising `ResumeError`."""
        self._reset_on_load = reset
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as err:  # missing/unexpected/misshapen parameters: another loss configuration
            detail = " ".join(str(err).split())
            raise ResumeError(
                f"loss {self.name}: checkpoint does not match this loss configuration ({detail[:300]}); "
                "resume with the checkpoint's [loss] settings"
            ) from None
        finally:
            self._reset_on_load = False
