"""One plan for how `train.batch_size` is cut up: the one place the batch quantities are derived and checked.

One optimizer step takes the global batch (`train.batch_size`, all processes together) in `train.grad_accum`
micro-steps. In each micro-step every process draws its micro-batch and the loss gathers them all, so one loss
call contrasts `train.batch_size / train.grad_accum` pairs (the contrast batch); the sampler draws that many
per micro-step (the loader batch) and hands each process its slice. Everything that needs one of these numbers
reads it here, so an error names the quantity that is wrong, not the key it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipctl.errors import UsageError

CONTRAST = "the contrast batch train.batch_size / train.grad_accum"


@dataclass(frozen=True)
class BatchPlan:
    """The batch quantities of a run, checked when the plan is made (a plan that exists is consistent)."""

    global_batch: int  # train.batch_size: pairs per optimizer step, all processes together
    grad_accum: int = 1  # train.grad_accum: micro-steps per optimizer step
    world_size: int = 1  # processes

    def __post_init__(self) -> None:
        for key, value in (("train.batch_size", self.global_batch), ("train.grad_accum", self.grad_accum)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{key} = {value!r}: expected a positive integer")
        if isinstance(self.world_size, bool) or not isinstance(self.world_size, int) or self.world_size < 1:
            raise UsageError(f"{self.world_size!r} processes: expected a positive integer")
        self._check_divisible()

    def _check_divisible(self) -> None:
        batch, accum, world = self.global_batch, self.grad_accum, self.world_size
        if batch % accum:
            raise UsageError(
                f"train.batch_size = {batch} is not divisible by train.grad_accum = {accum} (a step is {accum} "
                f"equal micro-steps); set train.batch_size to a multiple of {accum}"
            )
        contrast = batch // accum
        if contrast < 2:
            raise UsageError(
                f"{CONTRAST} = {batch} / {accum} = {contrast} pair has no negatives to contrast with; "
                "raise train.batch_size or lower train.grad_accum"
            )
        if contrast % world:
            raise UsageError(
                f"{CONTRAST} = {contrast} is not divisible by the {world} processes (each takes an equal "
                f"micro-batch); set train.batch_size to a multiple of train.grad_accum x processes = {accum * world}"
            )

    @property
    def contrast_batch(self) -> int:
        """Pairs one loss call contrasts: one micro-step of every process (the loss gathers them)."""
        return self.global_batch // self.grad_accum

    @property
    def loader_batch(self) -> int:
        """Pairs the sampler draws per micro-step, all processes together: the contrast batch, by construction."""
        return self.contrast_batch

    @property
    def micro_batch(self) -> int:
        """Pairs one process feeds one loss call: its slice of the loader batch."""
        return self.contrast_batch // self.world_size

    def steps_per_epoch(self, num_samples: int) -> int:
        """Optimizer steps per epoch of `num_samples` pairs. The incomplete last global batch is dropped: every
        process must contrast equal micro-batches, and a short step would weigh its pairs more."""
        if num_samples < self.global_batch:
            raise UsageError(
                f"train.batch_size = {self.global_batch} exceeds the {num_samples} training pairs (an epoch would "
                f"have no full step); lower train.batch_size to at most {num_samples}"
            )
        return num_samples // self.global_batch

    def steps_of_loader_batches(self, loader_batches: int) -> int:
        """Optimizer steps that `loader_batches` micro-steps make: a streamed epoch, whose loader batches per
        epoch the shard plan fixes (the smallest rank's), gives its steps this way."""
        return loader_batches // self.grad_accum

    def loader_batches(self, steps: int) -> int:
        """Loader batches that `steps` optimizer steps consume: where a resumed epoch's sampler starts."""
        return steps * self.grad_accum
