"""Training pairs as a flat folder of WebDataset `.tar` shards: `.jpg`/`.png` + `.txt` caption + `.json` with an
integer `key` per sample (specs/data.md, format 1). Samples are ordered by their key when every sample has a unique
one (for shards written in key order, as img2dataset and clipctl write them, that is shard order), else in shard
order and position in the shard, as the streaming reader numbers them (`clipctl.data.streaming`); keys are never
required unique. Only headers and the small `.txt`/`.json` members are read up front, each image is read by its
offset when it is used (random access: cheaper than streaming for a local folder).
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from clipctl.console import info, warn
from clipctl.data.layouts import PairsSource, Reader, is_folder, register_reader
from clipctl.errors import DataError


@dataclass(frozen=True)
class ShardMember:
    shard: int
    offset: int
    size: int
    name: str


def wds_key(member_name: str) -> tuple[str, str]:
    """WebDataset convention: the sample key is the path up to the first dot of the basename."""
    folder, _, base = member_name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


class ShardFiles:
    """Reads members by offset, one open handle per shard and process (a DataLoader worker must not share the
    parent's file offsets, so a copy sent to a worker reopens its own)."""

    def __init__(self, shards: list[Path]) -> None:
        self.shards = shards
        self._handles: dict[int, IO[bytes]] = {}
        self._pid = -1

    def read(self, member: ShardMember) -> bytes:
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(member.shard)
        if handle is None:
            handle = self._handles[member.shard] = open(self.shards[member.shard], "rb")
        handle.seek(member.offset)
        return handle.read(member.size)

    def __getstate__(self) -> dict[str, Any]:
        return {"shards": self.shards, "_handles": {}, "_pid": -1}


def _read_groups(shard: Path, shard_idx: int) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The sample keys of one shard in member order, and each sample's image member, caption and json text."""
    groups: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    try:
        with tarfile.open(shard, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = wds_key(info.name)
                if key not in groups:
                    groups[key] = {}
                    order.append(key)
                if ext in ("jpg", "jpeg", "png", "webp"):
                    name = f"{shard.name}:{info.name}"
                    groups[key]["image"] = ShardMember(shard_idx, info.offset_data, info.size, name)
                elif ext in ("txt", "json"):
                    handle = tar.extractfile(info)
                    groups[key][ext] = handle.read().decode("utf-8", "replace") if handle else ""
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"{shard}: unreadable tar shard ({err}); re-fetch the dataset or remove the shard") from None
    return order, groups


def _sort_key(shard: Path, key: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = json.loads(text).get("key")
        return int(value) if value is not None else None
    except (ValueError, AttributeError, TypeError):
        raise DataError(f'{shard}:{key}.json: expected a JSON object with an integer "key"') from None


def scan_shards(folder: Path) -> tuple[list[Path], list[tuple[ShardMember, str]]]:
    """(shards, [(image member, caption)]) for the complete samples of the `.tar` shards in `folder`, numbered as the
    module docstring says (by unique keys, else in shard order)."""
    shards = sorted(p for p in folder.iterdir() if p.suffix == ".tar" and p.is_file())
    if not shards:
        raise DataError(f"{folder}: no .tar shards found; expected WebDataset shards (.jpg/.png + .txt + .json)")
    samples: list[tuple[int | None, ShardMember, str]] = []
    incomplete = 0
    for shard_idx, shard in enumerate(shards):
        order, groups = _read_groups(shard, shard_idx)
        for key in order:
            group = groups[key]
            if "image" not in group or "txt" not in group:
                incomplete += 1
                continue
            samples.append((_sort_key(shard, key, group.get("json")), group["image"], group["txt"]))
    if incomplete:
        warn(f"{folder}: skipped {incomplete} samples without both an image and a .txt caption")
    keys = [s[0] for s in samples]
    if None not in keys and len(set(keys)) == len(keys):
        samples.sort(key=lambda s: s[0])
    elif any(key is not None for key in keys):
        info(
            f"{folder}: sample keys are missing or repeat (as in two img2dataset runs side by side); samples are "
            "numbered in shard order"
        )
    return shards, [(member, caption) for _, member, caption in samples]


def read_shards(folder: Path, image_root: Path | None = None) -> PairsSource:
    shards, samples = scan_shards(folder)
    members = [member for member, _ in samples]
    names = [member.name for member in members]
    return PairsSource(
        members, names, names, [caption for _, caption in samples], ShardFiles(shards).read, check_headers=False
    )


register_reader(
    Reader("webdataset", "pairs", "a folder of .tar shards (.jpg/.png + .txt + .json)", is_folder, read_shards)
)
