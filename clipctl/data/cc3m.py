"""`cc3m-100k`: a deterministic 100k-pair subset of Conceptual Captions 3M, images resized to <= 256 px.

Sources, in priority order:
1. `$CLIPCTL_CC3M_ARCHIVE`: an archive (tar/zip, extracted safely) or folder the user already has, such as
   the course's `cc3m_train_subset.json` + images; its pairs JSON is normalised into `train.json`.
2. `$CLIPCTL_CC3M_TSV`: a CC3M TSV (caption<TAB>url); images are downloaded in parallel and the first
   100,000 rows whose image loads are kept (dead links, 15-40%, are normal and skipped).
3. The Hugging Face WebDataset shards `pixparse/cc3m-wds` at a pinned revision, through huggingface_hub
   (`clipctl.data.hub`: its cache, token and `HF_ENDPOINT`), one shard at a time: the first 100,000 training
   samples in shard order, each shard checked against the registry's sha256 or else the hub's own
   (`$CLIPCTL_MIRROR` fetches them by plain URL instead).
Sources 2 and 3 write WebDataset shards (`shards/*.tar`: .jpg + .txt + .json with an integer `key`).
"""
from __future__ import annotations

import io
import itertools
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import requests
from PIL import Image

from clipctl.data.archive import extract, iter_tar_files, unsafe_reason
from clipctl.data.datasets import wds_key
from clipctl.data.fetch import http_session, download
from clipctl.data.hub import hub_file
from clipctl.atomic import atomic_write_json, replace_dir
from clipctl.data.manifest import check_hashes, files_digest, sha256_file
from clipctl.data.registry import CC3M_ARCHIVE_ENV, CC3M_TSV_ENV, MIRROR_ENV, DatasetSpec, RemoteFile, dataset_dir, source_url
from clipctl.errors import DataError
from clipctl.report.console import ProgressReporter, info, warn

MAX_SIDE = 256
SHARD_SAMPLES = 10_000
HUB_SHARDS = 576  # cc3m-train-0000.tar .. cc3m-train-0575.tar
TSV_WORKERS = 16


def resize_jpeg(data: bytes) -> bytes | None:
    """The image re-encoded as JPEG with its longer side <= 256 px, or None when it does not decode."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BICUBIC)
            out = io.BytesIO()
            img.save(out, format="JPEG", quality=90)
            return out.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


class ShardWriter:
    """Numbered WebDataset shards with dense integer keys (byte-identical for the same samples: mtime 0)."""

    def __init__(self, folder: Path, prefix: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.prefix, self.count = folder, prefix, 0
        self._writer: Any = None
        self._handle: Any = None

    def write(self, jpeg: bytes, caption: str) -> None:
        import webdataset as wds

        if self.count % SHARD_SAMPLES == 0:
            self.close()
            self._handle = open(self.folder / f"{self.prefix}-{self.count // SHARD_SAMPLES:06d}.tar", "wb")
            self._writer = wds.TarWriter(self._handle, encoder=False, mtime=0.0)
        key = f"{self.count:09d}"
        self._writer.write({"__key__": key, "jpg": jpeg, "txt": caption.encode("utf-8"),
                            "json": json.dumps({"key": self.count}).encode()})
        self.count += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._handle.close()
            self._writer = self._handle = None


def _shard_samples(path: Path) -> Iterator[tuple[bytes, str]]:
    """(image bytes, caption) of each complete sample of a WebDataset shard, in order."""
    current, group = None, {}
    for name, data in iter_tar_files(path):
        key, ext = wds_key(name)
        if key != current:
            if "jpg" in group and "txt" in group:
                yield group["jpg"], group["txt"].decode("utf-8", "replace")
            current, group = key, {}
        group[ext] = data
    if "jpg" in group and "txt" in group:
        yield group["jpg"], group["txt"].decode("utf-8", "replace")


def _hub_samples(spec: DatasetSpec, root: Path, used: list[dict[str, Any]]) -> Iterator[tuple[bytes, str]]:
    """Shards in order, one at a time (only as many as the target needs): through huggingface_hub, checked
    against the registry's sha256 or the hub's own; from `$CLIPCTL_MIRROR` by plain URL when one is set."""
    for i in range(HUB_SHARDS):
        name = f"cc3m-train-{i:04d}.tar"
        remote = next((f for f in spec.files if f.name == name), None) or RemoteFile(
            name, f"https://huggingface.co/datasets/{spec.hub_repo}/resolve/{spec.hub_revision}/{name}")
        if os.environ.get(MIRROR_ENV):
            url, path = source_url(spec, remote.url, name), root / "downloads" / "cc3m-wds" / name
            result = download(url, path, remote, dataset_id=spec.id, access_hint=spec.access_hint)
        else:
            url = remote.url
            path, result = hub_file(spec, remote, root)
        used.append({"name": name, "url": url, **result})
        yield from _shard_samples(path)


def _tsv_samples(tsv: Path) -> Iterator[tuple[bytes, str]]:
    session = http_session()

    def get(row: tuple[str, str]) -> tuple[bytes, str] | None:
        caption, url = row
        try:
            response = session.get(url, timeout=(5, 15))
            if response.status_code == 200 and response.content:
                return response.content, caption
        except requests.exceptions.RequestException:
            pass
        return None

    def rows() -> Iterator[tuple[str, str]]:
        with open(tsv, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 2 and parts[-1].startswith(("http://", "https://")):
                    yield parts[0], parts[-1]

    with ThreadPoolExecutor(TSV_WORKERS) as pool:
        block: list[tuple[str, str]] = []
        for row in rows():
            block.append(row)
            if len(block) == 1024:
                yield from (r for r in pool.map(get, block) if r)
                block = []
        yield from (r for r in pool.map(get, block) if r)


def _write_shards(spec: DatasetSpec, samples: Iterator[tuple[bytes, str]], tmp: Path) -> int:
    """Resize (thread pool: PIL releases the GIL) and write samples in order until the target count;
    pulls no more samples than it may still need, so no extra shard is downloaded."""
    target = spec.expect.get("pairs", 100_000)
    writer = ShardWriter(tmp / "shards", spec.id)
    with ProgressReporter(spec.id, total=target, unit="pairs") as progress, ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        while writer.count < target:
            batch = list(itertools.islice(samples, min(256, target - writer.count)))
            if not batch:
                break
            for jpeg, (_, caption) in zip(pool.map(resize_jpeg, [data for data, _ in batch]), batch):
                if jpeg is not None:
                    writer.write(jpeg, caption)
                    progress.update(1)
    writer.close()
    if writer.count < target:
        raise DataError(f"{spec.id}: only {writer.count} of {target} pairs could be made from the source; it has too few usable images")
    return writer.count


def _find_pairs_json(folder: Path) -> tuple[Path, list[dict[str, Any]], Path]:
    """The largest pairs-format JSON under `folder`, its entries, and the folder its image paths start from."""
    best: tuple[int, Path, list[dict[str, Any]]] | None = None
    for path in sorted(folder.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, list) and data and all(isinstance(e, dict) and isinstance(e.get("image"), str)
                                                   and isinstance(e.get("caption"), str) for e in data[:100]):
            if best is None or len(data) > best[0]:
                best = (len(data), path, data)
    if best is None:
        raise DataError(f"{folder}: no pairs JSON (a list of {{\"image\", \"caption\"}}) found; is this the CC3M subset?")
    _, path, entries = best
    for base in [path.parent, *path.parents]:
        if (base / entries[0]["image"]).is_file():
            if folder in (base, *base.parents):
                return path, entries, base
    raise DataError(f"{path}: image {entries[0]['image']!r} not found next to the JSON or in a parent folder")


def _from_archive(spec: DatasetSpec, source: Path, tmp: Path) -> tuple[dict[str, Any], list[str]]:
    if source.is_dir():
        shutil.copytree(source, tmp / "data")
    elif source.is_file():
        extract(source, tmp / "data")
    else:
        raise DataError(f"{CC3M_ARCHIVE_ENV}={source}: no such file or folder")
    json_path, entries, base = _find_pairs_json(tmp / "data")
    pairs = []
    for i, entry in enumerate(entries):
        if unsafe_reason(entry["image"]):
            raise DataError(f"{json_path}: entry {i}: image path {entry['image']!r} refused ({unsafe_reason(entry['image'])})")
        rel = (base / entry["image"]).relative_to(tmp).as_posix()
        pairs.append({"image": rel, "caption": entry["caption"], "image_id": entry.get("image_id", i)})
    atomic_write_json(tmp / "train.json", pairs)
    if len(pairs) != spec.expect.get("pairs", len(pairs)):
        warn(f"{spec.id}: {len(pairs)} pairs in {source} (the spec expects {spec.expect['pairs']}); using them as they are")
    images = sorted({p["image"] for p in pairs if (tmp / p["image"]).is_file()})
    digest, count = files_digest(tmp, images)
    return {"splits": {"train": "train.json"}, "files": {"train.json": sha256_file(tmp / "train.json")},
            "images": {"count": count, "sha256": digest}, "counts": {"pairs": len(pairs), "images": count}}, [str(source)]


def prepare(spec: DatasetSpec, root: Path, force: bool = False) -> dict[str, Any]:
    target = dataset_dir(spec, root)
    tmp = root / f".{spec.folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        archive, tsv = os.environ.get(CC3M_ARCHIVE_ENV, ""), os.environ.get(CC3M_TSV_ENV, "")
        downloads: list[dict[str, Any]] = []
        if archive:
            info(f"{spec.id}: using the local copy {archive}")
            manifest, sources = _from_archive(spec, Path(archive).expanduser(), tmp)
        else:
            if tsv:
                if not Path(tsv).is_file():
                    raise DataError(f"{CC3M_TSV_ENV}={tsv}: no such file")
                info(f"{spec.id}: downloading images listed in {tsv} (dead links are skipped)")
                count = _write_shards(spec, _tsv_samples(Path(tsv)), tmp)
                sources = [tsv]
            else:
                count = _write_shards(spec, _hub_samples(spec, root, downloads), tmp)
                sources = [d["url"] for d in downloads]
            shards = sorted(p.relative_to(tmp).as_posix() for p in (tmp / "shards").glob("*.tar"))
            manifest = {"splits": {"train": "shards"}, "files": {s: sha256_file(tmp / s) for s in shards},
                        "counts": {"pairs": count, "shards": len(shards)}}
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**manifest, "sources": sources,
            "downloads": {d["name"]: {k: d[k] for k in ("size", "sha256", "unverified") if k in d} for d in downloads},
            "verified": True, "size_bytes": size}


def verify(spec: DatasetSpec, root: Path, manifest: dict[str, Any]) -> None:
    folder = dataset_dir(spec, root)
    check_hashes(folder, manifest["files"], spec.id)
    if "images" in manifest:
        entries = json.loads((folder / "train.json").read_text(encoding="utf-8"))
        digest, _ = files_digest(folder, sorted({e["image"] for e in entries if (folder / e["image"]).is_file()}))
        if digest != manifest["images"]["sha256"]:
            raise DataError(f"{folder}: images differ from manifests/{spec.id}.json; run `clipctl data fetch {spec.id} --force`")
