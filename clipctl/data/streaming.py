"""Training pairs streamed from WebDataset shards wherever they live, each sample carrying its dense index.

Layer: clipctl's own thin `IterableDataset` over WebDataset's tar layer (`tar_file_iterator` + `group_by_keys`, in
`clipctl.data.shards.shard_samples`; an uncompressed `.tar`, local or remote, is read by offset once its members are
known, `clipctl.data.shardmembers` and `clipctl.data.remotemembers`) and its `gopen` for `pipe:`. Why not
`wds.WebDataset` or `wids`: WebDataset's node/worker splitters and shuffle are not positional — nothing says which
sample is the k-th of an epoch — so they can neither resume mid-epoch exactly nor guarantee every rank the same
number of steps (a rank that runs out first leaves the others waiting in a collective); `wids` needs random access
into local or cached shards, which is what the map-style reader (`clipctl.data.webdataset`) already does for a local
folder. Here everything is planned from the count table (`clipctl.data.shardindex`), so no shard is read to plan:

- Shards are dealt to (rank, loader worker) slots once, balanced by sample count (largest first to the emptiest
  slot), so every slot's batch count is known and the same each epoch; each epoch reads a slot's shards in a seeded
  order (seed, epoch, slot) through a seeded shuffle buffer of `shuffle_buffer` samples.
- Each loader worker batches its own slot; the DataLoader takes one batch from each worker in turn (skipping those
  that ran out), so a rank's k-th batch is known from the batch counts, and every rank stops after the same number
  of steps: the smallest rank's (`StreamPlan.batches_per_epoch`). The samples of a slot's incomplete last batch wait
  for a later epoch (the shuffle buffer decides which), as the map-style sampler drops an incomplete global batch.
- Resume after k batches: each worker replays its shuffle buffer over positions only (no data read) to its cursor
  and opens the shard holding the oldest sample still due; nothing trained on is decoded again. The same recipe
  resumes into the same batches as an uninterrupted run.
- A shard that cannot be read is retried with backoff (`shard_retries`, each read bounded by `shard_timeout_s`),
  then fails the run (exit 3, `on_bad_shard = "fail"`) or is skipped (`"skip"`): one warning line, counted, and its
  samples' places in the worker's batches are filled with repeats of that worker's latest samples, so every rank
  still takes the planned number of steps. Bad images follow `data.on_bad_image` as in the map-style reader.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import multiprocessing
import random
import tarfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipctl.console import warn_any_rank
from clipctl.data.datasets import augment_seed, seeded_transform
from clipctl.data.images import ImageReader, OnBadImage, check_mode
from clipctl.data.loader import loader_worker_init
from clipctl.data.remotemembers import readable_by_offset, remote_records
from clipctl.data.shardindex import CountTable, count_table
from clipctl.data.shardmembers import read_by_offset, shard_members
from clipctl.data.shards import OpenPolicy, expand_source, local_path, open_shard, shard_samples
from clipctl.data.text import TextTokenizer, clean_caption
from clipctl.errors import DataError, UsageError

OnBadShard = Literal["skip", "fail"]
TOKENIZER_SAMPLES = 100_000  # a wordpiece tokenizer trains on the captions of the first samples, in index order


@dataclass(frozen=True)
class StreamSettings:
    """The recipe's streaming settings (`data.on_bad_shard`, `shard_retries`, `shard_timeout_s`, `shuffle_buffer`)."""

    on_bad_shard: OnBadShard = "skip"
    retries: int = 3
    timeout_s: float = 60.0
    shuffle_buffer: int = 1000

    @property
    def open_policy(self) -> OpenPolicy:
        return OpenPolicy(connect_timeout_s=self.timeout_s, read_timeout_s=self.timeout_s)

    def backoff_s(self, attempt: int) -> float:
        """Wait before retry `attempt` (1, 2, ...): doubling from 1 s, never longer than one read may stall."""
        return min(2.0 ** (attempt - 1), self.timeout_s)


def assign_slots(counts: tuple[int, ...], slots: int) -> list[list[int]]:
    """Shards dealt to `slots` (rank-major: slot = rank * workers + worker), balanced by samples; each slot's shards
    in index order. Deterministic: the largest shard goes first, to the emptiest slot (lowest id on ties)."""
    heap = [(0, slot) for slot in range(slots)]
    dealt: list[list[int]] = [[] for _ in range(slots)]
    for shard in sorted(range(len(counts)), key=lambda i: (-counts[i], i)):
        total, slot = heapq.heappop(heap)
        dealt[slot].append(shard)
        heapq.heappush(heap, (total + counts[shard], slot))
    return [sorted(shards) for shards in dealt]


def round_robin_position(batches: list[int], done: int) -> tuple[list[int], int]:
    """Where a DataLoader over workers with `batches[w]` batches each stands after yielding `done` batches: how many
    each worker delivered, and the worker whose batch comes next. It cycles through the workers from worker 0,
    skipping those that ran out; a resumed loader starts its cycle at that next worker (`StreamingPairs.__iter__`)."""
    taken, worker = [0] * len(batches), 0
    if done > sum(batches):
        raise UsageError(f"resume position {done} is past the {sum(batches)} batches of this epoch")
    for _ in range(done):
        while taken[worker] >= batches[worker]:
            worker = (worker + 1) % len(batches)
        taken[worker] += 1
        worker = (worker + 1) % len(batches)
    for _ in batches:  # the next worker that still has a batch (any, when none has)
        if taken[worker] < batches[worker]:
            break
        worker = (worker + 1) % len(batches)
    return taken, worker


@dataclass(frozen=True)
class StreamPlan:
    """Which shards each (rank, worker) reads and how many batches of `batch` samples each yields per epoch."""

    counts: tuple[int, ...]
    world: int
    workers: int  # loader workers per rank (0 counts as 1: the main process reads)
    batch: int  # samples per batch and process (one loss call)

    @functools.cached_property
    def slots(self) -> list[list[int]]:
        return assign_slots(self.counts, self.world * self.workers)

    def worker_batches(self, rank: int) -> list[int]:
        slots = self.slots
        return [sum(self.counts[s] for s in slots[rank * self.workers + w]) // self.batch for w in range(self.workers)]

    @property
    def batches_per_epoch(self) -> int:
        """Batches every rank takes per epoch: the smallest rank's (a rank with more stops there too)."""
        return min(sum(self.worker_batches(rank)) for rank in range(self.world))


class BufferedOrder:
    """A shuffle buffer over read positions 0..total-1: the order a worker emits the samples it reads. Pure and
    seeded, so it can be replayed without data to any cursor (`pending` then says what is still due)."""

    def __init__(self, total: int, size: int, seed: list[int]) -> None:
        self.total, self.size = total, max(1, size)
        self.rng = random.Random("-".join(map(str, seed)))
        self.buffer: list[int] = []
        self.next_input = 0

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        while self.next_input < self.total and len(self.buffer) < self.size:
            self.buffer.append(self.next_input)
            self.next_input += 1
        if not self.buffer:
            raise StopIteration
        j = self.rng.randrange(len(self.buffer))
        out = self.buffer[j]
        if self.next_input < self.total:
            self.buffer[j] = self.next_input
            self.next_input += 1
        else:
            self.buffer[j] = self.buffer[-1]
            self.buffer.pop()
        return out

    def freeze(self) -> None:
        """Remember what is due at the current cursor (called once, after replaying to a resume point)."""
        self._pending, self._unread = set(self.buffer), self.next_input
        self.first_due = min([*self.buffer, self.next_input])  # where reading starts

    def due(self, position: int) -> bool:
        """Whether the sample at read position `position` was still to be emitted when frozen."""
        return position >= self._unread or position in self._pending


class _ShardFailed(Exception):
    """A shard given up on in skip mode: args (url, position reached)."""


Item = tuple[torch.Tensor, str, int]  # (image tensor, raw caption, dense index)


class StreamingPairs(IterableDataset):
    """Training pairs streamed from shards; yields (image tensor, raw caption, dense index), and `collate` makes
    batches of them what `PairsDataset`'s are: (images, token ids, indices).

    `len()` is the number of samples (the size of the per-sample loss state); `identity` the count table's digest.
    Set `tokenizer` before iterating and `set_epoch` before each epoch; `stream_loader` builds its DataLoader.
    Captions are cleaned and tokenized a batch at a time (the map-style reader does all of them once, up front; one
    at a time, they took about 15% of a 64-px sample's time in `bench/stream_bench.py`)."""

    def __init__(
        self,
        table: CountTable,
        transform: Callable,
        *,
        seed: int = 0,
        on_bad_image: OnBadImage = "skip",
        settings: StreamSettings = StreamSettings(),
        plan: StreamPlan,
        rank: int = 0,
        num_workers: int = 0,
        clean_text: Callable[[str], str] = clean_caption,
        members_cache: Path | None = None,
    ) -> None:
        check_mode(on_bad_image)
        self.table, self.transform, self.seed = table, transform, int(seed)
        self.clean_text = clean_text  # the model's caption cleaning (`clipctl.model.preprocess`)
        self.members_cache = members_cache  # where shards' member offsets are kept (`shardmembers`); None: nowhere
        if plan.workers != max(1, num_workers):
            raise ValueError(f"the plan is for {plan.workers} loader workers, the loader has {num_workers}")
        self.settings, self.plan, self.rank, self.num_workers = settings, plan, rank, num_workers
        self.identity = table.digest
        self.subset_indices: list[int] | None = None
        self.tokenizer: TextTokenizer | None = None
        self._reader = ImageReader(on_bad_image)
        self._failed = multiprocessing.Value("i", 0)  # shards skipped, by any worker of this process
        self.epoch, self.start_batch = 0, 0

    def __len__(self) -> int:
        return self.table.total

    @property
    def skipped_shards(self) -> int:
        return int(self._failed.value)

    @property
    def decode_failures(self) -> int:
        return self._reader.decode_failures

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The epoch the next iteration reads, and how many of this rank's batches of it are already done."""
        if not 0 <= start_batch <= self.plan.batches_per_epoch:
            raise UsageError(f"start batch {start_batch} is outside 0..{self.plan.batches_per_epoch} for this data")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    @property
    def captions(self) -> Iterator[str]:
        """The cleaned captions of the first samples in index order, read lazily (what a wordpiece tokenizer is
        trained on; a pretrained tokenizer reads none)."""
        wanted = min(TOKENIZER_SAMPLES, self.table.total)
        for shard in range(len(self.table.counts)):
            try:
                for _, _, _, caption in self._read_shard(shard, 0, counted=False):
                    yield self.clean_text(caption)
                    wanted -= 1
                    if wanted <= 0:
                        return
            except _ShardFailed:
                continue

    def __iter__(self) -> Iterator[Item]:
        """This loader worker's samples of the epoch from the resume point (the main process: worker 0)."""
        if self.tokenizer is None:
            raise RuntimeError("StreamingPairs: assign .tokenizer before reading items")
        info = get_worker_info()
        batches = self.plan.worker_batches(self.rank)
        taken, first = round_robin_position(batches, self.start_batch)
        worker = ((info.id if info is not None else 0) + first) % self.plan.workers  # loader worker 0 goes first
        skip = taken[worker] * self.plan.batch
        slot = self.rank * self.plan.workers + worker
        yield from self._slot_stream(slot, batches[worker] * self.plan.batch, skip)

    def _slot_order(self, slot: int) -> list[int]:
        """This epoch's reading order of a slot's shards."""
        shards = self.plan.slots[slot]
        rng = np.random.default_rng([self.seed, self.epoch, slot, 0x5A4D])
        return [shards[i] for i in rng.permutation(len(shards))]

    def _slot_stream(self, slot: int, planned: int, skip: int) -> Iterator[Item]:
        """The `planned` samples of a slot this epoch, from the `skip`-th on; failed shards' places are filled."""
        shards = self._slot_order(slot)
        starts = [0, *np.cumsum([self.table.counts[s] for s in shards]).tolist()]
        order = BufferedOrder(starts[-1], self.settings.shuffle_buffer, [self.seed, self.epoch, slot])
        for _ in range(skip):
            next(order)
        order.freeze()
        records = self._read_from(shards, starts, order)
        held: dict[int, Any] = {}
        recent: deque[Item] = deque(maxlen=max(1, self.plan.batch))
        owed = 0
        for _ in range(skip, planned):
            position = next(order)
            while position not in held:
                got, record = next(records)
                held[got] = record
            record = held.pop(position)
            if record is None:
                owed += 1
                continue
            item = self._item(*record)
            recent.append(item)
            yield item
        yield from self._fill(recent, owed, slot)

    def _fill(self, recent: deque, owed: int, slot: int) -> Iterator[Item]:
        """Repeats of the latest samples in the places of a skipped shard's (keeps every rank's step count)."""
        if owed and not recent:
            raise DataError(
                f"every shard of loader slot {slot} failed; check the source (see the warnings above) and its network"
            )
        for k in range(owed):
            yield recent[k % len(recent)]

    def _read_from(self, shards: list[int], starts: list[int], order: BufferedOrder) -> Iterator[tuple[int, Any]]:
        """(read position, (index, key, image, caption) or None for a skipped shard's sample) of every sample still
        due, from the shard holding the oldest one on."""
        first = order.first_due
        for k, shard in enumerate(shards):
            if starts[k + 1] <= first:
                continue
            begin = max(0, first - starts[k])
            offset = self.table.offsets[shard]
            try:
                for position, key, image, caption in self._read_shard(shard, begin):
                    if order.due(starts[k] + position):
                        yield starts[k] + position, (offset + position, key, image, caption)
            except _ShardFailed as failed:
                done = failed.args[1]
                for position in range(max(begin, done), self.table.counts[shard]):
                    if order.due(starts[k] + position):
                        yield starts[k] + position, None

    def _read_shard(self, shard: int, begin: int, counted: bool = True) -> Iterator[tuple[int, str, bytes, str]]:
        """(position, key, image bytes, caption) of a shard's samples from `begin`, retried with backoff from where
        the failure came; `_ShardFailed(url, position reached)` after the last try in skip mode (`counted`: in the
        skipped shards the summary reports; the tokenizer's caption pass is not training)."""
        url, count = self.table.shards.urls[shard], self.table.counts[shard]
        position, attempt = begin, 0
        while True:
            try:
                yield from self._shard_samples(url, count, position)
                return
            except (DataError, _ShardFailed):
                raise
            except Exception as err:  # noqa: BLE001 (any failure to read this shard: retried, then one line)
                reached = getattr(err, "reached", None)
                position = reached if reached is not None else position
                attempt += 1
                if attempt <= self.settings.retries:
                    time.sleep(self.settings.backoff_s(attempt))
                    continue
                self._give_up(url, err, attempt, count - position if counted else None)
                raise _ShardFailed(url, position) from None

    def _shard_samples(self, url: str, count: int, begin: int) -> Iterator[tuple[int, str, bytes, str]]:
        reached = begin
        try:
            for position, key, image, caption in self._records(url, begin, count):
                if position >= count:
                    break
                yield position, key, image, caption
                reached = position + 1
        except Exception as err:
            with contextlib.suppress(AttributeError):  # where to resume the shard on the next try
                err.reached = reached  # type: ignore[attr-defined]
            raise
        if reached < count:
            raise DataError(
                f"{url}: holds {reached} complete samples, its count table says {count}; the shard changed since it "
                "was indexed: run `clipctl data index` again (and restart the run)"
            )

    def _records(self, url: str, begin: int, count: int) -> Iterator[tuple[int, str, bytes, str]]:
        """(position, key, image, caption) of a shard's complete samples from `begin` on: a local `.tar` by offset
        (its members found once, `clipctl.data.shardmembers`), a remote `.tar` by offset after its first read of
        `count` samples (`clipctl.data.remotemembers`, which checks the shard is the one recorded), anything else
        (`pipe:`, `.tar.gz`, no place to keep members) through its tar headers in order. A local `.tar` whose headers
        do not walk (compressed, truncated) is read the last way, which yields what precedes the damage before
        failing."""
        if self.members_cache is not None and readable_by_offset(url):
            yield from remote_records(url, self.members_cache, begin, count, self.settings.open_policy)
            return
        path = local_path(url)
        if path is not None and path.name.lower().endswith(".tar"):
            try:
                members = shard_members(path, self.members_cache)
            except tarfile.TarError:
                pass
            else:
                yield from read_by_offset(path, members, begin)
                return
        with open_shard(url, self.settings.open_policy) as stream:
            for position, (key, image, caption) in enumerate(shard_samples(stream, url)):
                if position >= begin:
                    yield position, key, image, caption

    def _give_up(self, url: str, err: Exception, attempts: int, lost: int | None) -> None:
        """Fail the run (one line, exit 3), or warn and count the skipped shard (`lost`: its samples not trained on
        this epoch; None: not counted)."""
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        if self.settings.on_bad_shard == "fail":
            raise DataError(
                f"{url}: unreadable after {attempts} tries ({reason}); fix the source, or set "
                'data.on_bad_shard = "skip" to train on without it'
            ) from None
        if lost is None:
            warn_any_rank(
                f"{url}: unreadable after {attempts} tries ({reason}); its captions are left out of the tokenizer's"
            )
            return
        with self._failed.get_lock():
            self._failed.value += 1
        warn_any_rank(
            f"{url}: unreadable after {attempts} tries ({reason}); skipped its {lost} remaining samples this epoch"
        )

    def _item(self, index: int, key: str, image: bytes, caption: str) -> Item:
        picture = self._reader.load(image, f"{key} (sample {index})")
        return seeded_transform(self.transform, picture, augment_seed(self.seed, self.epoch, index)), caption, index

    def collate(self, items: list[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, token ids, dense indices) of a batch: its captions cleaned and tokenized in one call."""
        assert self.tokenizer is not None
        images, captions, indices = zip(*items, strict=True)
        tokens = self.tokenizer.encode([self.clean_text(caption) for caption in captions])
        return torch.stack(images), tokens, torch.tensor(indices, dtype=torch.long)


def stream_loader(dataset: StreamingPairs, *, pin_memory: bool = False) -> DataLoader:
    """The DataLoader of a streamed epoch: one batch of `plan.batch` per loss call, from each worker in turn.
    A new one per epoch (the workers take the epoch and resume point with their copy of the dataset)."""
    workers = dataset.num_workers
    return DataLoader(
        dataset,
        batch_size=dataset.plan.batch,
        drop_last=True,
        num_workers=workers,
        collate_fn=dataset.collate,
        worker_init_fn=loader_worker_init() if workers else None,
        pin_memory=pin_memory and torch.cuda.is_available(),
        # a private generator: starting workers must not draw from the global RNG (a resumed run's dropout
        # stream would differ from an uninterrupted one's)
        generator=torch.Generator().manual_seed(dataset.seed),
    )


def open_stream(
    source: str,
    root: Path,
    transform: Callable,
    *,
    seed: int,
    on_bad_image: OnBadImage,
    settings: StreamSettings,
    world: int,
    rank: int,
    num_workers: int,
    batch: int,
    clean_text: Callable[[str], str] = clean_caption,
) -> StreamingPairs:
    """The streamed training set of a shard source: its shard list, count table (no shard read) and plan for
    `world` processes of `num_workers` loader workers, each taking batches of `batch` samples."""
    table = count_table(expand_source(source), root, settings.open_policy)
    plan = StreamPlan(table.counts, world, max(1, num_workers), batch)
    if plan.batches_per_epoch < 1:
        raise UsageError(
            f"{source}: {table.total} samples in {len(table.counts)} shards give some process no full batch of "
            f"{batch} per epoch with {world} processes x {plan.workers} loader workers; lower data.num_workers or "
            "train.batch_size, or use more shards"
        )
    return StreamingPairs(
        table,
        transform,
        seed=seed,
        on_bad_image=on_bad_image,
        settings=settings,
        plan=plan,
        rank=rank,
        num_workers=num_workers,
        clean_text=clean_text,
        members_cache=Path(root) / "shard-index" / "members",
    )
