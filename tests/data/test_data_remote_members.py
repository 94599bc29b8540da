"""Remote `.tar` shards (HTTP, fsspec) read by offset after their first read: the same samples as a walk of their
headers, resumed from the first sample due (a Range request), walked again when the shard changed (another size,
or other bytes where a header was), and failures in the middle of a read by offset retried, then skipped (counted)
or fatal (exit 3) as before."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import fsspec
import pytest
from helpers import data_server
from helpers.shards import caption, clear_memory_fs, png, write_shards
from test_data_shard_members import odd_shard

from clipctl.data import remotemembers
from clipctl.data.remotemembers import readable_by_offset, recorded, remote_records
from clipctl.data.shardindex import CountTable
from clipctl.data.shards import OpenPolicy, expand_source, shard_samples
from clipctl.data.streaming import StreamingPairs, StreamPlan, StreamSettings, stream_loader
from clipctl.data.text import train_wordpiece
from clipctl.data.transforms import train_transform
from clipctl.errors import DataError

TOKENIZER = train_wordpiece([caption(i) for i in range(200)], 200, 16)
COUNTS = [6, 10, 4, 8, 7]
NAMES = [f"{i:05d}.tar" for i in range(len(COUNTS))]


@pytest.fixture
def shards(tmp_path):
    return write_shards(tmp_path / "shards", COUNTS)


@pytest.fixture
def server(shards):
    served = data_server.FileServer(files={f"/{p.name}": p.read_bytes() for p in shards})
    httpd, _ = data_server.start(served)
    yield served
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def bucket(shards):
    for path in shards:
        with fsspec.open(f"memory://remote-members/{path.name}", "wb") as sink:
            sink.write(path.read_bytes())
    yield "memory://remote-members"
    clear_memory_fs()


def loader_set(base: str, cache: Path | None, settings: StreamSettings, start: int = 0) -> StreamingPairs:
    table = CountTable(expand_source(f"{base}/{{00000..00004}}.tar"), tuple(COUNTS))
    data = StreamingPairs(
        table, train_transform(16, augment=True), seed=5, plan=StreamPlan(table.counts, 1, 1, 5), settings=settings,
        members_cache=cache,
    )  # fmt: skip
    data.tokenizer = TOKENIZER
    data.set_epoch(0, start)
    return data


def batches(data: StreamingPairs) -> list[tuple[list[int], float, list[list[int]]]]:
    return [(i.tolist(), float(x.sum()), t.tolist()) for x, t, i in stream_loader(data)]


def no_header_parsing(monkeypatch) -> None:
    """From here on, any tar header walk (tarfile's, through WebDataset's iterator or a members walk) fails."""

    def refuse(*args, **kwargs):
        raise AssertionError("a tar header walk")

    monkeypatch.setattr(tarfile, "open", refuse)


def test_only_remote_uncompressed_tar_urls_are_read_by_offset():
    assert readable_by_offset("http://h/a/00000.tar") and readable_by_offset("s3://b/x.TAR?version=2")
    assert not readable_by_offset("http://h/00000.tar.gz") and not readable_by_offset("pipe:cat 00000.tar")
    assert not readable_by_offset("/data/00000.tar") and not readable_by_offset("file:///data/00000.tar")


@pytest.mark.parametrize("where", ["server", "bucket"])
def test_a_second_read_is_by_offset_and_gives_the_first_reads_batches(where, request, tmp_path, monkeypatch):
    base = request.getfixturevalue(where)
    base = base.url if where == "server" else base
    settings = StreamSettings(shuffle_buffer=6)
    walked = batches(loader_set(base, None, settings))  # no members kept: every read walks the headers
    cache = tmp_path / "members"
    first = batches(loader_set(base, cache, settings))
    assert first == walked and len(first) == 7  # batches of 5: every sample is read
    assert len(list(cache.iterdir())) == len(COUNTS)  # every shard recorded, the epoch's last one too
    no_header_parsing(monkeypatch)
    again = loader_set(base, cache, settings)
    assert batches(again) == first and again.skipped_shards == 0
    assert batches(loader_set(base, cache, settings, start=3)) == first[3:]  # resumed: from the first sample due


def test_a_read_by_offset_asks_for_the_first_sample_due(server, tmp_path):
    url = f"{server.url}/00001.tar"
    cache = tmp_path / "members"
    whole = list(remote_records(url, cache, 0, 10, OpenPolicy()))
    members = recorded(cache, url)
    assert members is not None and len(members.samples) == 10
    server.log.clear()
    assert list(remote_records(url, cache, 7, 10, OpenPolicy())) == whole[7:]
    assert server.log == [("/00001.tar", f"bytes={members.samples[7].start}-")]
    server.script["/00001.tar"] = [{"ignore_range": True}]  # a server without ranges: the bytes before are skipped
    assert list(remote_records(url, cache, 7, 10, OpenPolicy())) == whole[7:]


def test_the_first_walk_gives_the_samples_of_the_tar_stream(tmp_path):
    """Folders, WebDataset's meta files and incomplete samples are left out as WebDataset's own iterator does."""
    shard = odd_shard(tmp_path / "odd.tar")
    with open(shard, "rb") as stream:
        expected = [(i, *sample) for i, sample in enumerate(shard_samples(stream, str(shard)))]
    with fsspec.open("memory://odd/odd.tar", "wb") as sink:
        sink.write(shard.read_bytes())
    try:
        cache = tmp_path / "members"
        assert list(remote_records("memory://odd/odd.tar", cache, 0, 2, OpenPolicy())) == expected
        assert list(remote_records("memory://odd/odd.tar", cache, 1, 2, OpenPolicy())) == expected[1:]
        assert recorded(cache, "memory://odd/odd.tar") is not None
    finally:
        clear_memory_fs()


def spy_walks(monkeypatch) -> list[int]:
    """The `begin` of every header walk remote_records starts."""
    begins: list[int] = []
    real = remotemembers.walk_and_record

    def walk(url, cache, begin, count, policy):
        begins.append(begin)
        return real(url, cache, begin, count, policy)

    monkeypatch.setattr(remotemembers, "walk_and_record", walk)
    return begins


@pytest.mark.parametrize("where", ["server", "bucket"])
def test_a_remote_shard_of_another_size_is_walked_again(where, request, tmp_path, monkeypatch):
    base = request.getfixturevalue(where)
    url = f"{base.url if where == 'server' else base}/00002.tar"
    cache = tmp_path / "members"
    before = list(remote_records(url, cache, 0, 4, OpenPolicy()))
    assert [c for *_, c in before] == [caption(k) for k in range(16, 20)]
    other = write_shards(tmp_path / "other", [12], first_key=1000)[0].read_bytes()  # (tars grow by 10 KiB)
    assert len(other) != recorded(cache, url).size
    if where == "server":
        base.files["/00002.tar"] = other
    else:
        with fsspec.open(url, "wb") as sink:
            sink.write(other)
    walks = spy_walks(monkeypatch)
    after = list(remote_records(url, cache, 1, 4, OpenPolicy()))
    assert [c for *_, c in after] == [caption(k) for k in range(1001, 1012)] and walks == [1]
    assert recorded(cache, url).size == len(other)  # recorded anew: the next read is by offset again
    assert list(remote_records(url, cache, 0, 4, OpenPolicy()))[1:] == after[:3] and walks == [1]


def fixed_shard(keys: list[str]) -> bytes:
    """A shard whose bytes depend on its keys only (fixed mtime): keys of one length give shards of one size."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i, key in enumerate(keys):
            for ext, data in (("png", png(i)), ("txt", caption(i).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 1_700_000_000
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_remote_shard_of_the_same_size_with_other_headers_is_walked_again_from_there(server, tmp_path, monkeypatch):
    url = f"{server.url}/fixed.tar"
    server.files["/fixed.tar"] = fixed_shard(["k0", "k1", "k2", "k3"])
    cache = tmp_path / "members"
    assert [key for _, key, _, _ in remote_records(url, cache, 0, 4, OpenPolicy())] == ["k0", "k1", "k2", "k3"]
    server.files["/fixed.tar"] = fixed_shard(["k0", "k1", "x2", "x3"])
    assert len(server.files["/fixed.tar"]) == recorded(cache, url).size
    walks = spy_walks(monkeypatch)
    again = list(remote_records(url, cache, 0, 4, OpenPolicy()))
    assert [key for _, key, _, _ in again] == ["k0", "k1", "x2", "x3"] and walks == [2]
    assert [sample.key for sample in recorded(cache, url).samples] == ["k0", "k1", "x2", "x3"]


def recorded_server(server: data_server.FileServer, tmp_path: Path) -> Path:
    """Every shard's members recorded by a first read."""
    cache = tmp_path / "members"
    batches(loader_set(server.url, cache, StreamSettings(shuffle_buffer=6)))
    assert len(list(cache.iterdir())) == len(COUNTS)
    server.log.clear()
    return cache


STALL, ERROR = {"stall_s": 3}, {"status": 500}  # a stall: half of what was asked for, then silence


@pytest.mark.parametrize("failures", [[ERROR, ERROR], [STALL, STALL], [STALL, ERROR]])
def test_a_shard_failing_in_a_read_by_offset_is_retried_then_skipped_and_counted(
    server, tmp_path, capsys, monkeypatch, failures
):
    cache = recorded_server(server, tmp_path)
    no_header_parsing(monkeypatch)
    server.script["/00001.tar"] = list(failures)
    data = loader_set(server.url, cache, StreamSettings(retries=1, timeout_s=0.5, shuffle_buffer=6))
    started = time.monotonic()
    indices = [i for batch, _, _ in batches(data) for i in batch]
    assert time.monotonic() - started < 30
    read = set(indices) & set(range(6, 16))  # shard 1: what arrived before the failure, if any
    assert len(indices) == 35 and data.skipped_shards == 1 and len(read) < 10
    assert [path for path, _ in server.log].count("/00001.tar") == 2  # one retry
    printed = capsys.readouterr()
    warning = [line for line in (printed.out + printed.err).splitlines() if "00001.tar" in line]
    assert len(warning) == 1 and "unreadable after 2 tries" in warning[0]
    assert f"skipped its {10 - len(read)} remaining samples" in warning[0]


@pytest.mark.parametrize("failure", [STALL, {"truncate": 30_000}])  # past the 16 KiB read buffer
def test_a_failure_in_a_read_by_offset_is_retried_from_the_sample_reached(server, tmp_path, monkeypatch, failure):
    cache = recorded_server(server, tmp_path)
    whole = batches(loader_set(server.url, cache, StreamSettings(shuffle_buffer=6)))
    no_header_parsing(monkeypatch)
    server.log.clear()
    server.script["/00001.tar"] = [failure]  # once, in the middle of the shard
    data = loader_set(server.url, cache, StreamSettings(retries=1, timeout_s=0.5, shuffle_buffer=6))
    assert batches(data) == whole and data.skipped_shards == 0
    ranges = [int(r.removeprefix("bytes=").rstrip("-")) for path, r in server.log if path == "/00001.tar"]
    assert len(ranges) == 2 and ranges[1] > ranges[0]  # the retry asked for the first sample not yet read


def test_a_shard_failing_in_a_read_by_offset_is_fatal_when_asked(server, tmp_path, monkeypatch):
    cache = recorded_server(server, tmp_path)
    no_header_parsing(monkeypatch)
    server.script["/00003.tar"] = [STALL, ERROR]
    settings = StreamSettings(on_bad_shard="fail", retries=1, timeout_s=0.5, shuffle_buffer=6)
    with pytest.raises(DataError, match=r"00003.tar: unreadable after 2 tries \(OSError: HTTP 500\)") as err:
        batches(loader_set(server.url, cache, settings))
    assert "\n" not in str(err.value) and err.value.exit_code == 3


def test_a_remote_shard_shrunk_past_the_range_asked_for_is_walked_again(server, tmp_path, monkeypatch):
    """The Range request starts past the new end (416): the whole shard is asked for, and its size tells."""
    url = f"{server.url}/00002.tar"
    cache = tmp_path / "members"
    list(remote_records(url, cache, 0, 4, OpenPolicy()))
    start = recorded(cache, url).samples[3].start
    server.files["/00002.tar"] = write_shards(tmp_path / "other", [1], first_key=50)[0].read_bytes()
    assert len(server.files["/00002.tar"]) < start
    walks = spy_walks(monkeypatch)
    server.log.clear()
    assert list(remote_records(url, cache, 3, 4, OpenPolicy())) == [] and walks == [3]  # 1 sample: none from 3
    assert server.log == [("/00002.tar", f"bytes={start}-"), ("/00002.tar", None), ("/00002.tar", None)]
    assert recorded(cache, url).size != len(server.files["/00002.tar"])  # fewer than counted: not recorded
