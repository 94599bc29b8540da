"""Local `.tar` shards read by offset: the members found once give the samples the tar stream gives (incomplete
samples, WebDataset's meta files and folders left out alike), are recorded once and reused until the shard changes,
and a damaged shard still fails (or is skipped) as a streamed one does."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from helpers.shards import caption, png, write_shards

from clipctl.data import shardmembers
from clipctl.data.shardindex import CountTable
from clipctl.data.shardmembers import read_by_offset, shard_members
from clipctl.data.shards import expand_source, shard_samples
from clipctl.data.streaming import StreamingPairs, StreamPlan, StreamSettings, stream_loader
from clipctl.data.text import train_wordpiece
from clipctl.data.transforms import train_transform

TOKENIZER = train_wordpiece([caption(i) for i in range(40)], 200, 16)


def streamed(path: Path) -> list[tuple[int, str, bytes, str]]:
    with open(path, "rb") as stream:
        return [(i, *sample) for i, sample in enumerate(shard_samples(stream, str(path)))]


def odd_shard(path: Path) -> Path:
    """A shard with a folder, WebDataset's `__meta__` file, a sample without caption and one without image."""
    with tarfile.open(path, "w") as tar:
        folder = tarfile.TarInfo("sub")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        members = [
            ("__meta__.json", b"{}"),
            ("sub/000.png", png(0)),
            ("sub/000.txt", caption(0).encode()),
            ("001.png", png(1)),
            ("002.txt", b"no image"),
            ("003.jpg", png(3)),
            ("003.TXT", caption(3).encode()),
            ("003.json", b'{"key": 3}'),
        ]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_members_give_the_samples_the_tar_stream_gives(tmp_path):
    shard = odd_shard(tmp_path / "odd.tar")
    by_offset = list(read_by_offset(shard, shard_members(shard, None), 0))
    assert by_offset == streamed(shard)
    assert [key for _, key, _, _ in by_offset] == ["sub/000", "003"]
    assert list(read_by_offset(shard, shard_members(shard, None), 1)) == by_offset[1:]


def test_members_are_recorded_once_and_found_again_after_a_change(tmp_path, monkeypatch):
    shard = write_shards(tmp_path / "shards", [5])[0]
    cache = tmp_path / "root" / "members"
    first = shard_members(shard, cache)
    assert len(first) == 5 and len(list(cache.iterdir())) == 1
    walked = []
    real_walk = shardmembers.walk_members
    monkeypatch.setattr(shardmembers, "walk_members", lambda path: walked.append(path) or real_walk(path))
    assert shard_members(shard, cache) == first and walked == []
    write_shards(tmp_path / "shards", [3], first_key=10)  # the same shard written again, other samples
    os.utime(shard, ns=(1, 1))
    again = list(read_by_offset(shard, shard_members(shard, cache), 0))
    assert walked == [shard] and [c for _, _, _, c in again] == [caption(k) for k in (10, 11, 12)]
    assert shard_members(shard, cache) == shard_members(shard, None) and walked == [shard, shard]


def test_an_unwritable_or_damaged_record_only_costs_a_walk(tmp_path):
    shard = write_shards(tmp_path / "shards", [4])[0]
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    assert len(shard_members(shard, blocked / "members")) == 4  # nowhere to record: read all the same
    cache = tmp_path / "members"
    shard_members(shard, cache)
    next(cache.iterdir()).write_text("{ not json")
    assert shard_members(shard, cache) == shard_members(shard, None)


def loader(shard: Path, count: int, settings: StreamSettings, cache: Path) -> StreamingPairs:
    table = CountTable(expand_source(str(shard)), (count,))
    data = StreamingPairs(
        table, train_transform(16, augment=False), plan=StreamPlan((count,), 1, 1, 2), settings=settings,
        members_cache=cache,
    )  # fmt: skip
    data.tokenizer = TOKENIZER
    return data


def test_a_truncated_local_shard_yields_what_precedes_the_damage_then_is_skipped(tmp_path, capsys):
    shard = write_shards(tmp_path / "shards", [6])[0]
    with tarfile.open(shard) as tar:
        cut = tar.getmember("000000003.png").offset_data + 10
    shard.write_bytes(shard.read_bytes()[:cut])  # inside the 4th sample's image
    data = loader(shard, 6, StreamSettings(retries=1, timeout_s=0.1, shuffle_buffer=1), tmp_path / "members")
    indices = [i.tolist() for _, _, i in stream_loader(data)]
    assert indices[0] == [0, 1] and data.skipped_shards == 1 and len(indices) == 3
    assert "skipped its 3 remaining samples" in capsys.readouterr().err


def test_a_shard_with_fewer_samples_than_counted_stops_the_run(tmp_path):
    shard = write_shards(tmp_path / "shards", [4])[0]
    data = loader(shard, 6, StreamSettings(shuffle_buffer=1), tmp_path / "members")
    with pytest.raises(Exception, match=r"holds 4 complete samples, its count table says 6") as err:
        list(stream_loader(data))
    assert getattr(err.value, "exit_code", None) == 3
