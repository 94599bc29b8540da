"""A remote uncompressed `.tar` shard (HTTP(S), an fsspec URL) read by offset on every read after its first.

Why: a remote shard used to be parsed through `tarfile` headers on every epoch (WebDataset's writer gives every member
a PAX header: about 200 µs per sample here), so streaming over HTTP ran at about 0.74x local streaming, which reads by
offset (`clipctl.data.shardmembers`). Here the first full read walks the headers as the stream arrives and records
where each complete sample's image and caption lie, keyed by the URL and the shard's size (the HTTP response's
Content-Length, fsspec's size); later reads take the same stream in one pass, reading the recorded byte ranges and
skipping everything between them unparsed.

Why it is sound: a read by offset first checks that the shard still has the recorded size, and at every sample that
the header block at the recorded place holds the recorded checksum and size fields (the checksum sums the whole
header: name, size, mtime, ...) and a name beginning with the key (`_header_holds`). When any differs, the shard
changed: it is walked again from the sample reached (the new walk records it anew), so the samples are the ones its
headers give, as before. The first read's records are made only when the shard's size is told (Content-Length),
its bytes are not encoded or compressed, and it holds the samples its count table says. A resumed or retried read
starts at the first sample still due: an HTTP Range request or a seek (a server that ignores ranges sends it all,
and the bytes before are skipped). Failures to read are not handled here: they reach the streaming reader, which
retries from the sample reached, then skips or fails.
"""

from __future__ import annotations

import contextlib
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from clipctl.data.shardmembers import SampleMembers, load_record, members_file, save_record, walk_samples
from clipctl.data.shards import IMAGE_EXTS, OpenPolicy, open_remote, scheme_of

SKIP_CHUNK = 1 << 20  # bytes between samples are read and dropped this much at a time
NAME_FIELD = 100  # bytes of a tar header's name field
LONGEST_EXT = 1 + max(len(ext) for ext in (*IMAGE_EXTS, "txt"))  # ".jpeg": of a sample's members' names
Record = tuple[int, str, bytes, str]  # (position, key, image bytes, raw caption)


def readable_by_offset(url: str) -> bool:
    """Whether a shard URL can be read by offset here: HTTP(S) or fsspec, an uncompressed `.tar` by its name (not a
    `pipe:` command, whose bytes cannot be asked for from an offset)."""
    if scheme_of(url) in ("", "file", "pipe"):
        return False
    return url.split("?", 1)[0].lower().endswith(".tar")


@dataclass(frozen=True)
class RemoteMembers:
    """A remote shard's first recorded samples: valid while the shard has `size` bytes (and its headers check out)."""

    size: int
    samples: list[SampleMembers]


class MembersChanged(Exception):
    """The shard is not the one recorded (another size, or other bytes where a header was): args (position,)."""


def recorded(cache: Path, url: str) -> RemoteMembers | None:
    found = load_record(members_file(cache, url))
    if found is None:
        return None
    stamp, samples = found
    size = stamp.get("size")
    if stamp.get("shard") != url or not isinstance(size, int):
        return None
    return RemoteMembers(size, samples)


def remote_records(url: str, cache: Path, begin: int, count: int, policy: OpenPolicy) -> Iterator[Record]:
    """(position, key, image, caption) of a remote shard's complete samples from `begin` on: by offset when its
    members are recorded and still hold, else by walking its headers (and recording them)."""
    members = recorded(cache, url)
    if members is not None and len(members.samples) >= count:
        try:
            yield from read_recorded(url, members, begin, policy)
            return
        except MembersChanged as changed:
            begin = changed.args[0]  # walk again; what was read before matched the record
    yield from walk_and_record(url, cache, begin, count, policy)


def walk_and_record(url: str, cache: Path, begin: int, count: int, policy: OpenPolicy) -> Iterator[Record]:
    """The samples from `begin` on, read through the tar headers from the shard's start. Its first `count` samples'
    members are recorded as soon as they are found (an epoch ends on some shard's last sample without reading past
    it: a record made at the shard's end would never be made for that one), when the shard's size is told, its bytes
    are an uncompressed tar and no sample's data is in a sparse member. A shard holding fewer samples than counted
    is never recorded (the streaming reader stops the run on it)."""
    opened = open_remote(url, policy)
    with contextlib.closing(opened.stream), tarfile.open(fileobj=opened.stream, mode="r|*") as tar:
        plain = getattr(tar.fileobj, "comptype", None) == "tar"  # what "r|*" found: "tar" is uncompressed
        keep = plain and opened.size is not None
        found: list[SampleMembers] = []
        for position, (members, at_offsets, image, caption) in enumerate(walk_samples(tar, url, read=True)):
            keep = keep and at_offsets
            found.append(members)
            if keep and position + 1 == count:
                stamp = {"shard": url, "size": opened.size}
                save_record(members_file(cache, url), stamp, found)
            if position >= begin:
                yield position, members.key, image or b"", (caption or b"").decode("utf-8", "replace")


def read_recorded(url: str, members: RemoteMembers, begin: int, policy: OpenPolicy) -> Iterator[Record]:
    """The recorded samples from `begin` on, in one pass over the shard's bytes from the first one due; a
    `MembersChanged(position)` before yielding a sample when the shard is not the one recorded."""
    samples = members.samples
    if begin >= len(samples):
        return
    opened = open_remote(url, policy, samples[begin].start)
    with contextlib.closing(opened.stream):
        if opened.size != members.size:
            raise MembersChanged(begin)
        at = opened.start
        for position in range(begin, len(samples)):
            sample = samples[position]
            if sample.start - at > SKIP_CHUNK:  # else the bytes between are read with the sample's (one read)
                _skip(opened.stream, sample.start - at, url, at)
                at = sample.start
            chunk = _read_exactly(opened.stream, sample.end - at, url, at)
            if not _header_holds(chunk, sample.start - at, sample):
                raise MembersChanged(position)
            image, caption = _cut(chunk, sample.image, at), _cut(chunk, sample.caption, at)
            at = sample.end
            yield position, sample.key, image, caption.decode("utf-8", "replace")


def _header_holds(chunk: bytes, where: int, sample: SampleMembers) -> bool:
    """Whether the block at `where` in `chunk` (the sample's start) is the header recorded there: its checksum and
    size fields hold the recorded ones (the checksum sums the whole header: name, size, mtime, ...), and its name
    field begins with the key where the member's name stands whole in it (plain ASCII of up to 100 bytes; a
    checksum does not see two keys swapped)."""
    if where < 0:  # the stream began past the sample (a server's odd range)
        return False
    block = chunk[where : where + tarfile.BLOCKSIZE]
    first = min(sample.image, sample.caption)
    try:
        fields = tarfile.nti(block[148:156]) == sample.check and tarfile.nti(block[124:136]) == first[1]
    except tarfile.HeaderError:  # not numbers: not a header
        return False
    key = sample.key.encode("utf-8", "surrogateescape")
    return fields and (not key.isascii() or len(key) > NAME_FIELD - LONGEST_EXT or block.startswith(key + b"."))


def _cut(chunk: bytes, where: tuple[int, int], at: int) -> bytes:
    """The member at shard offset `where` from a chunk that begins at shard offset `at`."""
    return chunk[where[0] - at : where[0] - at + where[1]]


def _skip(stream: IO[bytes], count: int, url: str, offset: int) -> None:
    """Drop the `count` bytes from `offset` (headers, members no sample uses): read, not parsed."""
    while count > 0:
        step = min(count, SKIP_CHUNK)
        _read_exactly(stream, step, url, offset)
        count, offset = count - step, offset + step


def _read_exactly(stream: IO[bytes], count: int, url: str, offset: int) -> bytes:
    """The `count` bytes from `offset` (a stream may return fewer per read); an OSError when the shard ends first
    (the transfer was cut short: the streaming reader retries it)."""
    parts, got = [], 0
    while got < count:
        part = stream.read(count - got)
        if not part:
            raise OSError(f"{url}: the shard ends at byte {offset + got}, {count - got} bytes short of what it held")
        parts.append(part)
        got += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)
