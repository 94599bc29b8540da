"""Where each complete sample's image and caption lie in a local `.tar` shard, found once per shard and kept in a small
file under the data root, so that later epochs read them by offset instead of parsing every tar header again.

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

MEMBERS_FORMAT = 1
META = re.compile(r"__[^/]*__($|/)")  # what WebDataset's tar_file_iterator skips


@dataclass(frozen=True)
class SampleMembers:
    """One complete sample of a shard: its key and the (offset, size) of its image and caption bytes."""

    key: str
    image: tuple[int, int]
    caption: tuple[int, int]


def walk_members(path: Path) -> list[SampleMembers]:
    """The complete samples of an uncompressed local tar shard from its headers alone (no member data is read)."""
    from webdataset.tariterators import group_by_keys

    with tarfile.open(path, mode="r:") as tar:
        files = (
            {"fname": info.name, "data": (info.offset_data, info.size), "__url__": str(path)}
            for info in _headers(tar)
            if info.isreg() and not META.match(info.name)
        )
        samples = []
        for sample in group_by_keys(files):
            image = next((sample[ext] for ext in IMAGE_EXTS if ext in sample), None)
            if image is not None and "txt" in sample:
                samples.append(SampleMembers(sample["__key__"], image, sample["txt"]))
    return samples


def _headers(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Each member's header, in order, without `tarfile` keeping them all (as WebDataset's iterator does): a walk
    holds one shard's samples, not its members' headers as well."""
    while (info := tar.next()) is not None:
        tar.members = []
        yield info


def members_file(cache: Path, path: Path) -> Path:
    return cache / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]}.json"


def _stamp(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"shard": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime}


def _load(file: Path, stamp: dict[str, Any]) -> list[SampleMembers] | None:
    """The recorded members when the file is there, readable and made from the shard as it is now."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        if data.get("format") != MEMBERS_FORMAT or any(data.get(k) != v for k, v in stamp.items()):
            return None
        return [SampleMembers(k, (io, isz), (to, tsz)) for k, io, isz, to, tsz in data["samples"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def shard_members(path: Path, cache: Path | None) -> list[SampleMembers]:
    """The complete samples of a local `.tar` shard: recorded in `cache` when still valid, else walked (and recorded
    there when it is writable; a read-only data root only costs the walk again next epoch)."""
    stamp = _stamp(path)
    file = members_file(cache, path) if cache is not None else None
    if file is not None:
        recorded = _load(file, stamp)
        if recorded is not None:
            return recorded
    samples = walk_members(path)
    if file is not None:
        rows = [[s.key, *s.image, *s.caption] for s in samples]
        payload = {"format": MEMBERS_FORMAT, **stamp, "samples": rows}
        with contextlib.suppress(OSError):
            atomic_write_text(file, json.dumps(payload, separators=(",", ":")))
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
