"""The streaming reader: one numbering whatever the source (folder, brace pattern, pipe:, HTTP, fsspec), every sample
once per epoch across ranks and loader workers, exact mid-epoch resume, and shard failures (HTTP 500, a stalled
server, a failing pipe) retried then skipped (counted) or fatal (exit 3), never a hang."""

from __future__ import annotations

import time
from pathlib import Path

import fsspec
import pytest
from helpers import data_server
from helpers.shards import caption, write_shards

from clipctl.data.datasets import PairsDataset
from clipctl.data.shardindex import CountTable, build_index
from clipctl.data.shards import expand_source
from clipctl.data.streaming import (
    BufferedOrder,
    StreamingPairs,
    StreamPlan,
    StreamSettings,
    assign_slots,
    round_robin_position,
    stream_loader,
)
from clipctl.data.text import train_wordpiece
from clipctl.data.transforms import train_transform
from clipctl.errors import DataError, UsageError

TOKENIZER = train_wordpiece([caption(i) for i in range(200)], 200, 16)


def epoch(
    table: CountTable,
    *,
    world: int = 1,
    workers: int = 0,
    batch: int = 4,
    start: int = 0,
    number: int = 0,
    settings: StreamSettings = StreamSettings(shuffle_buffer=6),
) -> list[list[tuple[list[int], float, list[list[int]]]]]:
    """Every rank's batches of one epoch: (indices, sum of the images, token ids)."""
    plan = StreamPlan(table.counts, world, max(1, workers), batch)
    ranks = []
    for rank in range(world):
        data = StreamingPairs(
            table, train_transform(16, augment=True), seed=3, plan=plan, rank=rank, num_workers=workers,
            settings=settings,
        )  # fmt: skip
        data.tokenizer = TOKENIZER
        data.set_epoch(number, start)
        ranks.append([(i.tolist(), float(x.sum()), t.tolist()) for x, t, i in stream_loader(data)])
    return ranks


def table_of(source: str, root: Path) -> CountTable:
    return build_index(expand_source(source), root)[1]


@pytest.fixture
def shards(tmp_path):
    folder = tmp_path / "shards"
    write_shards(folder, [6, 10, 4, 8, 7])
    return folder


def test_slots_are_balanced_disjoint_and_cover_every_shard():
    counts = (10, 9, 8, 7, 3, 3, 2, 1)
    slots = assign_slots(counts, 3)
    assert sorted(s for slot in slots for s in slot) == list(range(8))
    assert [sum(counts[s] for s in slot) for slot in slots] == [14, 14, 15]  # 10+3+1, 9+3+2, 8+7


def test_round_robin_position_follows_the_loader_past_an_exhausted_worker():
    assert round_robin_position([2, 1, 3], 0) == ([0, 0, 0], 0)
    assert round_robin_position([2, 1, 3], 2) == ([1, 1, 0], 2)  # w0 w1, then w2
    assert round_robin_position([2, 1, 3], 4) == ([2, 1, 1], 2)  # w0 w1 w2 w0; w1 and w0 are done: w2 next
    assert round_robin_position([2, 1, 3], 5) == ([2, 1, 2], 2)
    with pytest.raises(UsageError):
        round_robin_position([2, 1, 3], 7)


def test_shuffle_buffer_is_a_seeded_permutation():
    order = list(BufferedOrder(50, 7, [1, 2]))
    assert sorted(order) == list(range(50)) and order != list(range(50))
    assert order == list(BufferedOrder(50, 7, [1, 2])) and order != list(BufferedOrder(50, 7, [1, 3]))


def test_numbering_is_shard_offset_plus_position_as_the_map_style_reader(shards, tmp_path):
    """The same shards: the streaming index i carries the caption the map-style reader gives index i."""
    table = table_of(str(shards), tmp_path / "root")
    mapped = PairsDataset(shards, transform=train_transform(16, augment=False))
    streamed = {i: t for rank in epoch(table, batch=5) for indices, _, tokens in rank for i, t in zip(indices, tokens)}
    assert len(streamed) == 35 - 35 % 5
    mapped.tokenizer = TOKENIZER
    for index, tokens in streamed.items():
        assert tokens == mapped.tokens[index].tolist()


def test_every_source_form_gives_the_same_epoch(shards, tmp_path):
    """Folder, brace pattern, pipe:cat, HTTP on 127.0.0.1 and an fsspec URL: identical batches."""
    names = [f"{i:05d}.tar" for i in range(5)]
    server = data_server.FileServer(files={f"/{n}": (shards / n).read_bytes() for n in names})
    httpd, _ = data_server.start(server)
    for n in names:
        with fsspec.open(f"memory://bucket/{n}", "wb") as sink:
            sink.write((shards / n).read_bytes())
    try:
        sources = [
            str(shards),
            f"{shards}/{{00000..00004}}.tar",
            "::".join(f"pipe:cat {shards}/{n}" for n in names),
            f"{server.url}/{{00000..00004}}.tar",
            "memory://bucket/{00000..00004}.tar",
        ]
        runs = [epoch(table_of(source, tmp_path / "root"), workers=2) for source in sources]
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert all(run == runs[0] for run in runs[1:])
    assert len({table_of(source, tmp_path / "root").digest for source in sources[:2]}) == 1


def test_two_ranks_two_workers_see_every_sample_once(tmp_path):
    folder = tmp_path / "even"
    write_shards(folder, [8] * 8)
    table = table_of(str(folder), tmp_path / "root")
    ranks = epoch(table, world=2, workers=2)
    assert len(ranks[0]) == len(ranks[1]) == 8
    seen = sorted(i for rank in ranks for indices, _, _ in rank for i in indices)
    assert seen == list(range(64))
    again = epoch(table, world=2, workers=2, number=1)
    assert sorted(i for rank in again for indices, _, _ in rank for i in indices) == seen
    assert again != ranks  # another shard order and shuffle


@pytest.mark.parametrize("start", [1, 6, 10])
def test_resume_mid_epoch_yields_the_uninterrupted_rest(shards, tmp_path, start):
    """Workers of unequal batch counts (16 and 19 samples: 5 and 6 batches of 3; the first runs out before the
    last resume point): the rest of the epoch is batch for batch the same."""
    table = table_of(str(shards), tmp_path / "root")
    whole = epoch(table, workers=2, batch=3)[0]
    assert len(whole) == 11
    assert epoch(table, workers=2, batch=3, start=start)[0] == whole[start:]


def serve(shards: Path, script: dict) -> tuple[data_server.FileServer, object]:
    names = [f"{i:05d}.tar" for i in range(5)]
    server = data_server.FileServer(files={f"/{n}": (shards / n).read_bytes() for n in names}, script=script)
    httpd, _ = data_server.start(server)
    return server, httpd


@pytest.mark.parametrize("failure", [{"status": 500}, {"stall_s": 3}])
def test_a_failing_shard_is_retried_then_skipped_and_counted(shards, tmp_path, capsys, failure):
    server, httpd = serve(shards, {"/00001.tar": [failure] * 10})
    settings = StreamSettings(retries=1, timeout_s=0.5, shuffle_buffer=6)
    try:
        table = table_of(str(shards), tmp_path / "root")  # counts from the local copy
        remote = CountTable(expand_source(f"{server.url}/{{00000..00004}}.tar"), table.counts)
        started = time.monotonic()
        plan = StreamPlan(table.counts, 1, 1, 4)
        data = StreamingPairs(remote, train_transform(16, augment=False), plan=plan, settings=settings)
        data.tokenizer = TOKENIZER
        batches = [i.tolist() for _, _, i in stream_loader(data)]
        elapsed = time.monotonic() - started
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert len(batches) == plan.batches_per_epoch  # the planned steps, filled
    read = {i for b in batches for i in b} & set(range(6, 16))  # shard 1: what arrived before the stall, if any
    assert data.skipped_shards == 1 and len(read) < 10
    assert [path for path, _ in server.log].count("/00001.tar") == 2  # one retry
    printed = capsys.readouterr()
    warning = [line for line in (printed.out + printed.err).splitlines() if "00001.tar" in line]
    assert len(warning) == 1 and "unreadable after 2 tries" in warning[0]
    assert f"skipped its {10 - len(read)} remaining samples" in warning[0]
    assert elapsed < 30


def test_a_failing_shard_is_fatal_when_asked(shards, tmp_path):
    table = table_of(str(shards), tmp_path / "root")
    (shards / "00002.tar").write_bytes(b"")
    piped = CountTable(expand_source("::".join(f"pipe:cat {shards}/{i:05d}.tar" for i in range(5))), table.counts)
    plan = StreamPlan(table.counts, 1, 1, 4)
    settings = StreamSettings(on_bad_shard="fail", retries=1, timeout_s=0.2)
    data = StreamingPairs(piped, train_transform(16, augment=False), plan=plan, settings=settings)
    data.tokenizer = TOKENIZER
    with pytest.raises(DataError, match=r"00002.tar: unreadable after 2 tries .*data.on_bad_shard = \"skip\"") as err:
        list(stream_loader(data))
    assert "\n" not in str(err.value) and err.value.exit_code == 3


def test_a_stalled_pipe_is_ended_by_its_read_timeout(tmp_path):
    """A `pipe:` command that produces nothing: its watchdog ends it after shard_timeout_s, every try."""
    stalled = CountTable(expand_source("pipe:sleep 60"), (4,))
    settings = StreamSettings(on_bad_shard="fail", retries=1, timeout_s=0.5)
    plan = StreamPlan((4,), 1, 1, 4)
    data = StreamingPairs(stalled, train_transform(16, augment=False), plan=plan, settings=settings)
    data.tokenizer = TOKENIZER
    started = time.monotonic()
    with pytest.raises(DataError, match=r"pipe:sleep 60: unreadable after 2 tries"):
        list(stream_loader(data))
    assert time.monotonic() - started < 20


def test_two_img2dataset_runs_side_by_side_number_alike_in_both_readers(tmp_path, capsys):
    """Both runs number their keys from 0: the map-style reader numbers them in shard order (instead of refusing the
    repeated keys), as the streaming reader does."""
    folder = tmp_path / "two-runs"
    write_shards(folder, [5, 3], name="a{:05d}")
    write_shards(folder, [4, 4], name="b{:05d}")
    mapped = PairsDataset(folder, transform=train_transform(16, augment=False))
    assert len(mapped) == 16 and "numbered in shard order" in capsys.readouterr().err
    assert mapped.captions == [caption(k) for k in [*range(8), *range(8)]]
    mapped.tokenizer = TOKENIZER
    streamed = epoch(table_of(str(folder), tmp_path / "root"), batch=4, settings=StreamSettings(shuffle_buffer=3))
    pairs = {i: t for rank in streamed for indices, _, tokens in rank for i, t in zip(indices, tokens)}
    assert len(pairs) == 16
    for index, tokens in pairs.items():
        assert tokens == mapped.tokens[index].tolist()
