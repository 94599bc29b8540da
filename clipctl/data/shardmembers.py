"""Where each complete sample's image and caption lie in an uncompressed `.tar` shard, found once per shard and kept in
a small file under the data root, so that later epochs read them by offset instead of parsing every tar header again.
This module reads local shards (a seek per sample); `clipctl.data.remotemembers` reads remote ones (in one pass).

Why: Python's `tarfile` parses a header in tens of microseconds, and WebDataset's writer (img2dataset's too) gives
every member a PAX header, so a streamed epoch spent about as long walking headers as decoding and augmenting the
images (0.67x the map-style reader, which walks them once at start-up and then reads by offset). Here the walk
happens on a shard's first read (and again only when its size or mtime changes); the members file is O(samples of
one shard) and read per shard, so memory stays independent of the dataset size.

The samples are the ones `clipctl.data.shards.shard_samples` yields for the same shard, in the same order:
WebDataset's `group_by_keys` groups the members (regular files, WebDataset's `__meta__` files left out), and a
sample is complete with an image and a `.txt`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from clipctl.atomic import atomic_write_text
from clipctl.data.shards import IMAGE_EXTS

MEMBERS_FORMAT = 2  # 2: each sample records its first member's header checksum (a remote read verifies it)
META = re.compile(r"__[^/]*__($|/)")  # what WebDataset's tar_file_iterator skips


@dataclass(frozen=True)
class SampleMembers:
    """One complete sample of a shard: its key, the (offset, size) of its image and caption bytes, and the header
    checksum of the first of the two members (what tells a remote read that the bytes there are still that member's
    header)."""

    key: str
    image: tuple[int, int]
    caption: tuple[int, int]
    check: int

    @property
    def start(self) -> int:
        """Where the header of the sample's first member (image or caption, whichever comes first) begins."""
        return min(self.image[0], self.caption[0]) - tarfile.BLOCKSIZE

    @property
    def end(self) -> int:
        """Just past the data of the sample's last member."""
        return max(self.image[0] + self.image[1], self.caption[0] + self.caption[1])


@dataclass(frozen=True)
class _Member:
    """A member as the walk groups it: where its data lies, its header checksum, its bytes when they were read."""

    offset: int
    size: int
    check: int
    sparse: bool
    data: bytes | None


Walked = tuple[SampleMembers, bool, bytes | None, bytes | None]  # (members, plain, image, caption)


def walk_samples(tar: tarfile.TarFile, url: str, read: bool) -> Iterator[Walked]:
    """Each complete sample of an open tar, in order: its members, whether its data lies plainly at those offsets
    (not in a sparse member), and its image and caption bytes when `read` (a stream walk; a seekable local walk
    reads headers only and gets None). The members are grouped by WebDataset's `group_by_keys` after the filter of
    its `tar_file_iterator` (regular files, `__meta__` files left out), so these are the samples
    `clipctl.data.shards.shard_samples` yields."""
    from webdataset.tariterators import group_by_keys

    files = (
        {"fname": info.name, "data": _member(tar, info, read), "__url__": url}
        for info in _headers(tar)
        if info.isreg() and not META.match(info.name)
    )
    for sample in group_by_keys(files):
        image = next((sample[ext] for ext in IMAGE_EXTS if ext in sample), None)
        if image is None or "txt" not in sample:
            continue
        caption = sample["txt"]
        first = min(image, caption, key=lambda member: member.offset)
        members = SampleMembers(
            sample["__key__"], (image.offset, image.size), (caption.offset, caption.size), first.check
        )
        yield members, not (image.sparse or caption.sparse), image.data, caption.data


def _member(tar: tarfile.TarFile, info: tarfile.TarInfo, read: bool) -> _Member:
    data = tar.extractfile(info).read() if read else None  # type: ignore[union-attr] (a regular file)
    return _Member(info.offset_data, info.size, info.chksum, info.issparse(), data)


def walk_members(path: Path) -> list[SampleMembers]:
    """The complete samples of an uncompressed local tar shard from its headers alone (no member data is read); a
    `tarfile.ReadError` when a sample's data does not lie plainly at an offset (a sparse member)."""
    with tarfile.open(path, mode="r:") as tar:
        walked = list(walk_samples(tar, str(path), read=False))
    if not all(plain for _, plain, _, _ in walked):
        raise tarfile.ReadError(f"{path}: holds sparse members; read as a stream")
    return [members for members, _, _, _ in walked]


def _headers(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Each member's header, in order, without `tarfile` keeping them all (as WebDataset's iterator does): a walk
    holds one shard's samples, not its members' headers as well."""
    while (info := tar.next()) is not None:
        tar.members = []
        yield info


def members_file(cache: Path, shard: str) -> Path:
    """The members file of a shard: a local one by its resolved path, a remote one by its URL."""
    return cache / f"{hashlib.sha256(shard.encode()).hexdigest()[:24]}.json"


def _stamp(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"shard": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime}


def load_record(file: Path) -> tuple[dict[str, Any], list[SampleMembers]] | None:
    """(stamp, samples) of a members file when it is there, readable and of this format (else None: walk again)."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        if data.get("format") != MEMBERS_FORMAT:
            return None
        samples = [SampleMembers(k, (io, isz), (to, tsz), chk) for k, io, isz, to, tsz, chk in data["samples"]]
        return {k: v for k, v in data.items() if k not in ("format", "samples")}, samples
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def save_record(file: Path, stamp: dict[str, Any], samples: list[SampleMembers]) -> None:
    """Keep a shard's members with what they are valid for; where the data root is read-only, keep nothing (the
    shard is only walked again next epoch)."""
    rows = [[s.key, *s.image, *s.caption, s.check] for s in samples]
    with contextlib.suppress(OSError):
        atomic_write_text(file, json.dumps({"format": MEMBERS_FORMAT, **stamp, "samples": rows}, separators=(",", ":")))


def shard_members(path: Path, cache: Path | None) -> list[SampleMembers]:
    """The complete samples of a local `.tar` shard: recorded in `cache` when still valid, else walked (and recorded
    there when it is writable; a read-only data root only costs the walk again next epoch)."""
    stamp = _stamp(path)
    file = members_file(cache, stamp["shard"]) if cache is not None else None
    if file is not None:
        recorded = load_record(file)
        if recorded is not None and recorded[0] == stamp:
            return recorded[1]
    samples = walk_members(path)
    if file is not None:
        save_record(file, stamp, samples)
    return samples


def _read(stream: IO[bytes], where: tuple[int, int], path: Path) -> bytes:
    offset, size = where
    stream.seek(offset)
    data = stream.read(size)
    if len(data) != size:
        raise OSError(f"{path}: ends inside a member at byte {offset} (truncated shard)")
    return data


def read_by_offset(path: Path, samples: list[SampleMembers], begin: int) -> Iterator[tuple[int, str, bytes, str]]:
    """(position, key, image bytes, raw caption) of a local `.tar` shard's complete `samples` (`shard_members`)
    from position `begin` on, read by offset (nothing before `begin` is read)."""
    with open(path, "rb") as stream:
        for position in range(begin, len(samples)):
            sample = samples[position]
            image = _read(stream, sample.image, path)
            caption = _read(stream, sample.caption, path).decode("utf-8", "replace")
            yield position, sample.key, image, caption
