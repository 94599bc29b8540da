"""The count table of a shard source: how many samples each shard holds, so every process numbers every sample
without reading the data: sample i = (offset of its shard) + (its position among the shard's complete samples).

Counts come, per shard, from (1) a clipctl index file (`clipctl data index SOURCE`), beside the shards when they are
local and writable (`.clipctl-shards.json` in their common folder), else under the data root (`shard-index/`), or
one uploaded beside remote shards (same name, their common prefix); a local shard's entry holds only while its size
and mtime match; a remote shard's size, recorded by `clipctl data index`, is checked at start (HTTP HEAD or fsspec
info, one request per shard) and a changed one is refused (the shard was replaced since it was indexed); (2)
img2dataset's `{shard}_stats.json` beside the shard (its `successes`). A shard with neither is missing: training
refuses with the command that makes the index. Keys play no part in the numbering (img2dataset repeats them across
runs by design).

The table's digest (shard names and counts, in order) is the data identity a run records and checks on resume.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from bisect import bisect_right
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

from clipctl.atomic import atomic_write_json
from clipctl.data.shards import OpenPolicy, ShardList, open_shard, scheme_of, shard_samples, shard_size
from clipctl.errors import DataError, StorageError

INDEX_NAME = ".clipctl-shards.json"
INDEX_FORMAT = 1
SAVE_EVERY_S = 5.0  # a long `data index` saves its progress this often (resumable)


@dataclass(frozen=True)
class CountTable:
    """Sample counts of a shard list, in dataset order."""

    shards: ShardList
    counts: tuple[int, ...]

    @property
    def offsets(self) -> tuple[int, ...]:
        """The dense index of each shard's first sample."""
        return (0, *accumulate(self.counts))[:-1]

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def digest(self) -> str:
        """sha256 of the (name, count) list: which shard each dense index range is."""
        text = "".join(f"{name}\t{count}\n" for name, count in zip(self.shards.names, self.counts, strict=True))
        return hashlib.sha256(text.encode()).hexdigest()

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, position in shard) of dense index `index`."""
        offsets = self.offsets
        shard = bisect_right(offsets, index) - 1
        return shard, index - offsets[shard]


def _stamp(shards: ShardList, i: int) -> dict[str, Any] | None:
    """Size and mtime of a local shard (what an index entry is checked against); None for a remote one."""
    path = shards.local[i]
    if path is None:
        return None
    stat = path.stat()
    return {"size": stat.st_size, "mtime": stat.st_mtime}


def index_paths(shards: ShardList, root: Path) -> list[Path]:
    """Where the index of `shards` may live: beside local shards (their common folder), then the data root."""
    digest = hashlib.sha256("\n".join(shards.urls).encode()).hexdigest()[:16]
    in_root = Path(root) / "shard-index" / f"{digest}.json"
    if not shards.all_local:
        return [in_root]
    first = str(shards.local[0])
    folder = Path(first[: len(first) - len(shards.names[0])] or ".")
    return [folder / INDEX_NAME, in_root]


def _read_entries(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise DataError(
            f"{path}: unreadable shard index ({err}); delete it and run `clipctl data index` again"
        ) from None
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or not isinstance(data.get("shards"), dict):
        raise DataError(f"{path}: not a clipctl shard index (format {INDEX_FORMAT}); delete it and index again")
    return data["shards"]


def _valid(entry: dict[str, Any] | None, stamp: dict[str, Any] | None) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("count"), int):
        return False
    return stamp is None or (entry.get("size") == stamp["size"] and entry.get("mtime") == stamp["mtime"])


def remote_index_url(shards: ShardList) -> str | None:
    """Where an index uploaded beside remote shards would be (their common prefix), None for local or `pipe:` ones:
    one index written once (`clipctl data index`, then copied there) serves every node."""
    if shards.all_local or any(scheme_of(u) == "pipe" for u in shards.urls):
        return None
    return shards.urls[0][: len(shards.urls[0]) - len(shards.names[0])] + INDEX_NAME


def _remote_entries(url: str, policy: OpenPolicy) -> dict[str, dict[str, Any]]:
    try:
        with open_shard(url, policy) as stream:
            data = json.loads(stream.read())
    except Exception:  # noqa: BLE001 (absent or unreachable: no counts from there)
        return {}
    ok = isinstance(data, dict) and data.get("format") == INDEX_FORMAT and isinstance(data.get("shards"), dict)
    return data["shards"] if ok else {}


def indexed_entries(shards: ShardList, root: Path, policy: OpenPolicy = OpenPolicy()) -> dict[int, dict[str, Any]]:
    """The index entry of each shard whose entry is still valid: under the data root or beside local shards, then
    beside remote ones."""
    found: dict[int, dict[str, Any]] = {}
    tables = [_read_entries(path) for path in index_paths(shards, root)]
    remote = remote_index_url(shards)
    if remote is not None and len(tables[0]) < len(shards.urls):
        tables.append(_remote_entries(remote, policy))
    for entries in tables:
        for i, name in enumerate(shards.names):
            if i not in found and _valid(entries.get(name), _stamp(shards, i)):
                found[i] = entries[name]
    return found


def resized_shards(
    shards: ShardList, entries: dict[int, dict[str, Any]], policy: OpenPolicy, workers: int = 16
) -> dict[int, tuple[int, int]]:
    """{shard: (size now, size indexed)} of the remote shards whose index entry records a size they no longer have
    (replaced since they were indexed; an index is trusted only that far). One HEAD or fsspec info per such shard,
    in parallel; a shard whose size cannot be told is not refused here (reading it is retried)."""
    recorded = {
        i: entry["size"]
        for i, entry in entries.items()
        if shards.local[i] is None and scheme_of(shards.urls[i]) != "pipe" and isinstance(entry.get("size"), int)
    }
    if not recorded:
        return {}
    sizes = _parallel(lambda i: shard_size(shards.urls[i], policy), sorted(recorded), workers)
    return {i: (sizes[i], recorded[i]) for i in sorted(recorded) if sizes[i] is not None and sizes[i] != recorded[i]}


def stats_url(url: str) -> str:
    """img2dataset's statistics file of a shard: `00000.tar` -> `00000_stats.json`."""
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if url.lower().endswith(suffix):
            return url[: -len(suffix)] + "_stats.json"
    return url + "_stats.json"


def _stats_count(url: str, policy: OpenPolicy) -> int | None:
    """`successes` of the shard's img2dataset stats, None when there is none (or it is not readable)."""
    if scheme_of(url) == "pipe":
        return None
    try:
        with open_shard(stats_url(url), policy) as stream:
            value = json.loads(stream.read()).get("successes")
    except Exception:  # noqa: BLE001 (absent, unreachable or malformed all mean: no count from here)
        return None
    return value if isinstance(value, int) and value >= 0 else None


def count_table(shards: ShardList, root: Path, policy: OpenPolicy = OpenPolicy(), workers: int = 16) -> CountTable:
    """The counts of every shard from an index or img2dataset stats (no shard is read); a DataError (exit 3) naming
    `clipctl data index` when some shard has neither."""
    entries = indexed_entries(shards, root, policy)
    resized = resized_shards(shards, entries, policy, workers)
    if resized:
        i, (now, indexed) = next(iter(resized.items()))
        raise DataError(
            f"{shards.urls[i]}: {now} bytes, its shard index says {indexed} ({len(resized)} shards changed since "
            f"they were indexed); run `clipctl data index {shards.source!r}` again (and upload the new index beside "
            "the shards when it lives there)"
        )
    counts = {i: entry["count"] for i, entry in entries.items()}
    missing = [i for i in range(len(shards.urls)) if i not in counts]
    if missing:
        counts.update(_parallel(lambda i: _stats_count(shards.urls[i], policy), missing, workers))
    missing = [i for i in range(len(shards.urls)) if counts.get(i) is None]
    if missing:
        raise DataError(
            f"{shards.source}: no sample counts for {len(missing)} of {len(shards.urls)} shards (first: "
            f"{shards.names[missing[0]]}); run `clipctl data index {shards.source!r}` once to write them"
        )
    return CountTable(shards, tuple(counts[i] for i in range(len(shards.urls))))


def _parallel(task: Callable[[int], Any], items: list[int], workers: int) -> dict[int, Any]:
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as pool:
        return dict(zip(items, pool.map(task, items), strict=True))


def count_shard(url: str, policy: OpenPolicy = OpenPolicy()) -> int:
    """The complete samples of one shard, read once (what the streaming reader will yield from it)."""
    with open_shard(url, policy) as stream:
        return sum(1 for _ in shard_samples(stream, url))


def _count_and_size(url: str, policy: OpenPolicy) -> tuple[int, int | None]:
    """A shard's count and, for a remote one, its size (what a later start checks the index entry against)."""
    size = shard_size(url, policy)
    return count_shard(url, policy), size


class _IndexWriter:
    """The index file being built: entries merged into what it held, saved every few seconds and at the end, so an
    interrupted `data index` continues where it stopped."""

    def __init__(self, shards: ShardList, root: Path) -> None:
        self.shards, self.root = shards, root
        self.paths = index_paths(shards, root)
        self.entries: dict[str, dict[str, Any]] = {}
        for path in reversed(self.paths):
            self.entries.update(_read_entries(path))
        self.lock = threading.Lock()
        self.saved_at = time.monotonic()

    def add(self, i: int, count: int, size: int | None = None) -> None:
        """Shard i's count, with what it is checked against: a local shard's size and mtime, a remote one's size."""
        stamp = _stamp(self.shards, i) or ({"size": size} if size is not None else {})
        with self.lock:
            self.entries[self.shards.names[i]] = {"count": count, **stamp}
            if time.monotonic() - self.saved_at > SAVE_EVERY_S:
                self.save()

    def save(self) -> Path:
        """Write beside the shards when possible, else under the data root; the path written."""
        payload = {"format": INDEX_FORMAT, "shards": dict(sorted(self.entries.items()))}
        for path in self.paths:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(path, payload)
                self.saved_at = time.monotonic()
                return path
            except OSError as err:
                error = err
        raise StorageError.from_os_error(error, then="run `clipctl data index` again (it continues)")


def build_index(
    shards: ShardList,
    root: Path,
    *,
    workers: int = 8,
    policy: OpenPolicy = OpenPolicy(),
    on_shard: Callable[[str, int], None] | None = None,
) -> tuple[Path, CountTable]:
    """Count every shard without a valid entry (in parallel threads: the work is reading) and write the index;
    returns its path and the table. A shard that cannot be read is a DataError naming it (the entries counted so far
    are kept)."""
    writer = _IndexWriter(shards, root)
    entries = indexed_entries(shards, root, policy)
    resized = resized_shards(shards, entries, policy, workers)
    known = {i: entry["count"] for i, entry in entries.items() if i not in resized}
    todo = [i for i in range(len(shards.urls)) if i not in known]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo) or 1))) as pool:
        futures = {pool.submit(_count_and_size, shards.urls[i], policy): i for i in todo}
        try:
            for future in as_completed(futures):
                i = futures[future]
                try:
                    count, size = future.result()
                except Exception as err:  # noqa: BLE001 (any read failure of that shard: named, one line)
                    raise DataError(f"{shards.urls[i]}: cannot read this shard to count it ({err})") from None
                known[i] = count
                writer.add(i, count, size)
                if on_shard is not None:
                    on_shard(shards.names[i], count)
        finally:
            for future in futures:
                future.cancel()
            writer.save()
    return writer.save(), CountTable(shards, tuple(known[i] for i in range(len(shards.urls))))
