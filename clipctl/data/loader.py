"""Seeded, resumable, process-sliced batching for training.

Each epoch is a permutation of 0..N-1 drawn from (seed, epoch). Loader batch k is perm[k*L:(k+1)*L], L the
plan's loader batch; with K processes, rank r takes the r-th contiguous slice of L/K (its micro-batch) of every
loader batch, so K processes see exactly the batches a single process sees. `start_batch` skips the loader
batches an interrupted run already trained on, which makes mid-epoch resume exact.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import multiprocessing
import multiprocessing.util  # registers the join of children at exit, before _exit_flag's hook
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from clipctl.data.batch_plan import BatchPlan
from clipctl.errors import UsageError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_POLL_S = 0.2  # how often a loader worker checks whether its main process is exiting


def loader_worker_init() -> Callable[[int], None]:
    """The worker_init_fn of every DataLoader with workers: ignore stop signals, and end with the main process.

    Why the second: a worker that ignores SIGTERM also ignores the `terminate()` with which torch's shutdown
    and multiprocessing's exit end it, and multiprocessing's exit then joins it forever (a failed run whose
    iterator outlived it, a worker stuck in a read). The main process raises a shared flag when it exits;
    a thread in each worker watches it and ends the worker, whatever its main thread is doing.
    """
    return functools.partial(_init_worker, _exit_flag(os.getpid()))


def _init_worker(main_exits: ctypes.c_byte, worker_id: int) -> None:
    """A process-group SIGTERM/SIGINT (Slurm, systemd, `docker stop`) is the main process's to handle; a
    worker that died of it would fail the run instead of stopping it."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    threading.Thread(target=_exit_when_raised, args=(main_exits,), name="clipctl-exit-watch", daemon=True).start()


def _exit_when_raised(main_exits: ctypes.c_byte) -> None:
    while not main_exits.value:
        time.sleep(EXIT_POLL_S)
    os._exit(0)  # status 0: torch's SIGCHLD check reports any other as a failed worker


@functools.cache
def _exit_flag(pid: int) -> ctypes.c_byte:
    """One flag per main process, raised by an exit hook that runs before multiprocessing joins its children
    (atexit runs hooks last-in first-out, and multiprocessing.util, imported above, registered its join first).

    A lock-free shared byte, not an Event: setting an Event waits for its waiters to wake, and the waiters of
    workers that already ended never do.
    """
    flag = multiprocessing.RawValue("b", 0)
    atexit.register(_raise_in, flag, pid)
    return flag


def _raise_in(flag: ctypes.c_byte, pid: int) -> None:
    if os.getpid() == pid:  # never from a forked child that somehow ran exit hooks
        flag.value = 1


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch; depends only on (num_samples, seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch), 0x5A3B]).permutation(num_samples)


class ResumableBatchSampler(Sampler[list]):
    """Yields this process's micro-batch of every loader batch of an epoch, from `start_batch` on.

    With `tag_epoch=True` each element is `(index, epoch)`, the key `PairsDataset` uses to make
    augmentation independent of workers and resumes.
    """

    def __init__(
        self,
        num_samples: int,
        plan: BatchPlan,
        *,
        seed: int = 0,
        epoch: int = 0,
        start_batch: int = 0,
        rank: int = 0,
        drop_last: bool = True,
        tag_epoch: bool = False,
    ) -> None:
        if not 0 <= rank < plan.world_size:
            raise UsageError(f"rank {rank} is outside 0..{plan.world_size - 1}")
        if num_samples < 1:
            raise UsageError("the training set is empty")
        if drop_last and num_samples < plan.loader_batch:
            raise UsageError(
                f"the loader batch train.batch_size / train.grad_accum = {plan.loader_batch} (a micro-batch of each "
                f"of {plan.world_size} process(es)) exceeds the {num_samples} training samples; lower train.batch_size"
            )
        self.plan, self.num_samples, self.batch_size = plan, int(num_samples), plan.loader_batch
        self.seed, self.rank = int(seed), int(rank)
        self.drop_last, self.tag_epoch = drop_last, tag_epoch
        self.epoch, self.start_batch = 0, 0
        self.set_epoch(epoch, start_batch)

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to iterate next and how many of its batches are already done."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise UsageError(
                f"start batch {start_batch} is outside 0..{self.batches_per_epoch} (loader batches of "
                f"{self.batch_size} in {self.num_samples} samples)"
            )
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def loader_batch_at(self, k: int, perm: np.ndarray | None = None) -> np.ndarray:
        perm = epoch_permutation(self.num_samples, self.seed, self.epoch) if perm is None else perm
        return perm[k * self.batch_size : (k + 1) * self.batch_size]

    def _local(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) == self.batch_size:
            micro = self.plan.micro_batch
            return batch[self.rank * micro : (self.rank + 1) * micro]
        return np.array_split(batch, self.plan.world_size)[self.rank]  # the last, short batch (drop_last=False)

    def __iter__(self) -> Iterator[list]:
        perm = epoch_permutation(self.num_samples, self.seed, self.epoch)
        epoch = self.epoch
        for k in range(self.start_batch, self.batches_per_epoch):
            local = self._local(self.loader_batch_at(k, perm)).tolist()
            yield [(i, epoch) for i in local] if self.tag_epoch else local

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def state_dict(self, batches_done: int) -> dict[str, int]:
        """What a checkpoint stores to resume after `batches_done` batches of the current epoch."""
        return {
            "epoch": self.epoch,
            "start_batch": int(batches_done),
            "seed": self.seed,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["num_samples"] != self.num_samples or state["batch_size"] != self.batch_size:
            raise UsageError(
                f"sampler state is for {state['num_samples']} samples / loader batch {state['batch_size']}, this run "
                f"has {self.num_samples} / {self.batch_size}; resume with the same data, train.batch_size and "
                "train.grad_accum"
            )
        self.seed = int(state["seed"])
        self.set_epoch(state["epoch"], state["start_batch"])


def build_train_loader(
    dataset: Dataset,
    plan: BatchPlan,
    *,
    seed: int = 0,
    epoch: int = 0,
    start_batch: int = 0,
    rank: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    drop_last: bool = True,
    prefetch_factor: int | None = None,
    collate_fn: Callable[[list], Any] | None = None,
) -> DataLoader:
    """The training DataLoader: this rank's micro-batch of each of the plan's loader batches;
    `loader.batch_sampler.set_epoch(e)` each epoch.

    Items are fetched with `(index, epoch)` keys (seeded augmentation). `persistent_workers` and
    `prefetch_factor` only apply with workers; `pin_memory` only when CUDA is available.
    """
    sampler = ResumableBatchSampler(
        len(dataset),
        plan,
        seed=seed,
        epoch=epoch,
        start_batch=start_batch,
        rank=rank,
        drop_last=drop_last,
        tag_epoch=True,
    )
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            extra["prefetch_factor"] = prefetch_factor
    # A private generator: creating the iterator must not draw from the global RNG, or a resumed run's
    # RNG stream (dropout, ...) would differ from an uninterrupted one.
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        generator=generator,
        worker_init_fn=loader_worker_init() if num_workers > 0 else None,
        pin_memory=pin_memory and torch.cuda.is_available(),
        collate_fn=collate_fn,
        **extra,
    )
