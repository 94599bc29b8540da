"""`cc3m-100k`: a deterministic 100k-pair subset of Conceptual Captions 3M, shorter image side 256 px.

Sources, in priority order:
1. `$CLIPCTL_CC3M_ARCHIVE`: the course's pairs JSON (`clip_train/cc3m_train_subset.json`, its images in
   `$CLIPCTL_CC3M_IMAGES`, joined as images / entry["image"]), a folder holding JSON and images, or an archive
   (tar/zip, extracted safely). A JSON or folder is referenced in place (hashed, never copied): `train.json`
   lists the images by absolute path.
2. `$CLIPCTL_CC3M_TSV`: a CC3M TSV (caption<TAB>url); images are downloaded in parallel and the first
   100,000 rows whose image loads are kept (dead links, 15-40%, are normal and skipped).
3. The Hugging Face WebDataset shards `pixparse/cc3m-wds` at a pinned revision, through huggingface_hub
   (`clipctl.data.hub`: its cache, token and `HF_ENDPOINT`), one shard at a time: the first 100,000 training
   samples in shard order, each shard checked against the registry's sha256 or else the hub's own
   (`$CLIPCTL_MIRROR` fetches them by plain URL instead).
Sources 2 and 3 write WebDataset shards (`shards/*.tar`: .jpg + .txt + .json with an integer `key`), each
image resized once, as img2dataset made the hub's: ratio kept, shorter side `prepare_size` (default 256);
an image already that small keeps its original bytes. The manifest's `subset` records the sha256 of the
sorted sample keys (image paths, hub keys or URLs), so two copies can be told apart or proven the same.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from PIL import Image
from pydantic import Field

from clipctl.atomic import atomic_write_json
from clipctl.console import ProgressReporter, info, warn
from clipctl.data.archive import extract, iter_tar_files, unsafe_reason
from clipctl.data.fetch import download, http_session
from clipctl.data.hub import hub_file
from clipctl.data.localfiles import file_kind, regular_file_inside
from clipctl.data.manifest import check_hashes, files_digest, sha256_file
from clipctl.data.records import (
    MIRROR_ENV,
    DatasetOptions,
    DatasetSpec,
    Preparer,
    RemoteFile,
    Split,
    dataset_dir,
    register_dataset,
    source_url,
)
from clipctl.data.staging import staged
from clipctl.data.webdataset import wds_key
from clipctl.errors import DataError

CC3M_ARCHIVE_ENV = "CLIPCTL_CC3M_ARCHIVE"
CC3M_TSV_ENV = "CLIPCTL_CC3M_TSV"
CC3M_IMAGES_ENV = "CLIPCTL_CC3M_IMAGES"
PREPARE_SIZE = 256  # the shorter side of a prepared image (img2dataset's resize_mode="keep_ratio")
COURSE_JSON = "cc3m_train_subset.json"  # the course's annotation file: its 100k pairs are the published subset
SHARD_SAMPLES = 10_000
HUB_SHARDS = 576  # cc3m-train-0000.tar .. cc3m-train-0575.tar
TSV_WORKERS = 16


def resize_jpeg(data: bytes, size: int = PREPARE_SIZE) -> bytes | None:
    """The image with its ratio kept and its shorter side set to `size`, encoded once as JPEG; a JPEG whose
    shorter side is already <= `size` is returned byte for byte. None when it does not decode.

    Why: training crops `size` px, so a smaller shorter side would be upsampled, and a second lossy encode
    of an already small image only adds artefacts.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if min(img.size) <= size and img.format == "JPEG":
                return data
            rgb = img.convert("RGB")
            scale = size / min(rgb.size)
            if scale < 1:
                rgb = rgb.resize(
                    (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.BICUBIC
                )
            out = io.BytesIO()
            rgb.save(out, format="JPEG", quality=90)
            return out.getvalue()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def subset_identity(keys: list[str], source: str) -> dict[str, Any]:
    """What identifies a training subset: the sha256 of its sorted sample keys, their count, and whether it
    is the course's own subset (its annotation file), which the published rows trained on."""
    digest = hashlib.sha256("\n".join(sorted(keys)).encode("utf-8")).hexdigest()
    return {"keys_sha256": digest, "count": len(keys), "source": source, "course": source == "course-json"}


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
        self._writer.write(
            {
                "__key__": key,
                "jpg": jpeg,
                "txt": caption.encode("utf-8"),
                "json": json.dumps({"key": self.count}).encode(),
            }
        )
        self.count += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._handle.close()
            self._writer = self._handle = None


Sample = tuple[str, bytes, str]  # (source key, image bytes, caption)


def _shard_samples(path: Path) -> Iterator[Sample]:
    """(key, image bytes, caption) of each complete sample of a WebDataset shard, in order."""
    current, group = None, {}
    for name, data in iter_tar_files(path):
        key, ext = wds_key(name)
        if key != current:
            if "jpg" in group and "txt" in group:
                yield str(current), group["jpg"], group["txt"].decode("utf-8", "replace")
            current, group = key, {}
        group[ext] = data
    if "jpg" in group and "txt" in group:
        yield str(current), group["jpg"], group["txt"].decode("utf-8", "replace")


def _hub_samples(spec: DatasetSpec, root: Path, used: list[dict[str, Any]]) -> Iterator[Sample]:
    """Shards in order, one at a time (only as many as the target needs): through huggingface_hub, checked
    against the registry's sha256 or the hub's own; from `$CLIPCTL_MIRROR` by plain URL when one is set."""
    for i in range(HUB_SHARDS):
        name = f"cc3m-train-{i:04d}.tar"
        remote = next((f for f in spec.files if f.name == name), None) or RemoteFile(
            name, f"https://huggingface.co/datasets/{spec.hub_repo}/resolve/{spec.hub_revision}/{name}"
        )
        if os.environ.get(MIRROR_ENV):
            url, path = source_url(spec, remote.url, name), root / "downloads" / "cc3m-wds" / name
            result = download(url, path, remote, dataset_id=spec.id, access_hint=spec.access_hint)
        else:
            url = remote.url
            path, result = hub_file(spec, remote, root)
        used.append({"name": name, "url": url, **result})
        yield from _shard_samples(path)


def _tsv_samples(tsv: Path) -> Iterator[Sample]:
    session = http_session()

    def get(row: tuple[str, str]) -> Sample | None:
        caption, url = row
        try:
            response = session.get(url, timeout=(5, 15))
            if response.status_code == 200 and response.content:
                return url, response.content, caption
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


def _write_shards(spec: DatasetSpec, samples: Iterator[Sample], tmp: Path, size: int) -> list[str]:
    """Resize (thread pool: PIL releases the GIL) and write samples in order until the target count; the
    source keys of the written samples. Pulls no more samples than it may still need, so no extra shard
    is downloaded."""
    target = spec.expect.get("pairs", 100_000)
    writer = ShardWriter(tmp / "shards", spec.id)
    keys: list[str] = []
    with (
        ProgressReporter(spec.id, total=target, unit="pairs") as progress,
        ThreadPoolExecutor(os.cpu_count() or 2) as pool,
    ):
        while writer.count < target:
            batch = list(itertools.islice(samples, min(256, target - writer.count)))
            if not batch:
                break
            resized = pool.map(lambda sample: resize_jpeg(sample[1], size), batch)
            for jpeg, (key, _, caption) in zip(resized, batch):
                if jpeg is not None:
                    writer.write(jpeg, caption)
                    keys.append(key)
                    progress.update(1)
    writer.close()
    if writer.count < target:
        raise DataError(
            f"{spec.id}: only {writer.count} of {target} pairs could be made from the source; it has too few "
            "usable images"
        )
    return keys


def pairs_json_subset(path: Path) -> dict[str, Any] | None:
    """The subset identity of a pairs JSON (its image paths are the keys); None when `path` is not one."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if _pairs_problem(data) is not None:
        return None
    kind = "course-json" if path.name == COURSE_JSON else "pairs-json"
    return subset_identity([Path(e["image"]).as_posix() for e in data], kind)


def _looks_like_pairs(data: Any) -> bool:
    """The shape of a pairs JSON, judged on its first 100 entries: picks the candidate in a folder, whose every
    entry `_pairs_problem` then checks."""
    return (
        isinstance(data, list)
        and bool(data)
        and all(
            isinstance(e, dict) and isinstance(e.get("image"), str) and isinstance(e.get("caption"), str)
            for e in data[:100]
        )
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {list: "a list", dict: "an object", str: "a string"}.get(type(value), f"a {type(value).__name__}")


def _pairs_problem(data: Any) -> str | None:
    """What keeps `data` from being a pairs JSON, naming the first bad entry (index and what is wrong); None
    when every entry has a `caption` string and an `image` string naming a path inside the image folder.

    Why every entry: a bad entry past the first ones would otherwise pass the fetch and fail training later.
    """
    if not isinstance(data, list) or not data:
        what = "an empty list" if data == [] else _json_type(data)
        return f'{what}, not a list of {{"image", "caption"}} objects'
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            return f"entry {i} is {_json_type(entry)}, not an object"
        for key in ("image", "caption"):
            if key not in entry:
                return f'entry {i} has no "{key}"'
            if not isinstance(entry[key], str):
                return f'entry {i}: "{key}" is {_json_type(entry[key])}, not a string'
        if unsafe_reason(entry["image"]):
            return f"entry {i}: image path {entry['image']!r} refused ({unsafe_reason(entry['image'])})"
    return None


def _read_pairs(path: Path) -> list[dict[str, Any]]:
    """Every entry of the pairs JSON at `path`, all checked; a one-line DataError naming the first bad one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable JSON file ({err}); expected the course's {COURSE_JSON}") from None
    problem = _pairs_problem(data)
    if problem is not None:
        raise DataError(
            f'{path}: {problem}; every entry needs "image" and "caption" strings (the course\'s {COURSE_JSON}): '
            "fix or remove that entry"
        )
    return data


def _find_pairs_json(folder: Path) -> Path:
    """The largest pairs-format JSON under `folder` (regular files inside it only)."""
    best: tuple[int, Path] | None = None
    for path in sorted(folder.rglob("*.json")):
        try:
            data = json.loads(regular_file_inside(path, folder).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if _looks_like_pairs(data) and (best is None or len(data) > best[0]):
            best = (len(data), path)
    if best is None:
        raise DataError(f'{folder}: no pairs JSON (a list of {{"image", "caption"}}) found; is this the CC3M subset?')
    return best[1]


def _image_root(json_path: Path, first: str, within: Path | None) -> Path:
    """The folder the JSON's image paths start from: `$CLIPCTL_CC3M_IMAGES` when set, else the JSON's folder or
    the nearest parent (inside `within`) holding the first image."""
    images = os.environ.get(CC3M_IMAGES_ENV, "")
    if images:
        base = Path(images).expanduser()
        if not os.path.lexists(base / first):
            raise DataError(
                f"{CC3M_IMAGES_ENV}={images}: {base / first} (the first entry of {json_path.name}) is not "
                f"there; point it at the folder the entries' image paths start from"
            )
        regular_file_inside(base / first, base)
        return base.resolve()
    for base in [json_path.parent, *json_path.parents]:
        if within is not None and within not in (base, *base.parents):
            break
        if os.path.lexists(base / first):
            regular_file_inside(base / first, base)
            return base.resolve()
    raise DataError(
        f"{json_path}: image {first!r} not found next to the JSON or in a parent folder; set "
        f"{CC3M_IMAGES_ENV} to the image folder (the course's datasets/cc3m_subset_100k/)"
    )


def _from_archive(spec: DatasetSpec, source: Path, tmp: Path) -> tuple[dict[str, Any], list[str]]:
    """train.json from the user's copy: a pairs JSON or folder is referenced in place (absolute image paths),
    an archive is extracted into the dataset folder (relative paths)."""
    if source.is_file() and source.suffix.lower() == ".json":
        json_path, within, in_place = source, None, True
    elif source.is_dir():
        json_path, within, in_place = _find_pairs_json(source), source, True
    elif source.is_file():
        extract(source, tmp / "data")
        json_path, within, in_place = _find_pairs_json(tmp / "data"), tmp / "data", False
    elif source.exists():
        raise DataError(f"{CC3M_ARCHIVE_ENV}={source}: {file_kind(source)}, not a JSON file, an archive or a folder")
    else:
        raise DataError(f"{CC3M_ARCHIVE_ENV}={source}: no such file or folder")
    json_path = json_path.resolve()
    entries = _read_pairs(json_path)
    base = _image_root(json_path, entries[0]["image"], within.resolve() if within else None)
    in_place = in_place or not base.is_relative_to(tmp)  # an archive's JSON with $CLIPCTL_CC3M_IMAGES elsewhere
    pairs, keys = [], []
    for i, entry in enumerate(entries):
        image = base / entry["image"]
        if os.path.lexists(image):  # an absent image is the loader's business (on_bad_image); a FIFO or link out is not
            regular_file_inside(image, base)
        keys.append(Path(entry["image"]).as_posix())
        pairs.append(
            {
                "image": str(image) if in_place else image.relative_to(tmp.resolve()).as_posix(),
                "caption": entry["caption"],
                "image_id": entry.get("image_id", i),
            }
        )
    atomic_write_json(tmp / "train.json", pairs)
    if len(pairs) != spec.expect.get("pairs", len(pairs)):
        warn(
            f"{spec.id}: {len(pairs)} pairs in {source} (the spec expects {spec.expect['pairs']}); using them "
            "as they are"
        )
    digest_base = base if in_place else tmp  # the paths verify() will see: relative to the images or the dataset
    rels = keys if in_place else [p["image"] for p in pairs]
    digest, count = files_digest(digest_base, sorted({r for r in rels if (digest_base / r).is_file()}))
    kind = "course-json" if json_path.name == COURSE_JSON else "pairs-json"
    images = {"count": count, "sha256": digest, "root": str(base) if in_place else None}
    return {
        "splits": {"train": "train.json"},
        "files": {"train.json": sha256_file(tmp / "train.json")},
        "images": images,
        "counts": {"pairs": len(pairs), "images": count},
        "subset": subset_identity(keys, kind),
    }, [str(source)]


def prepare(spec: DatasetSpec, root: Path, force: bool = False, prepare_size: int = PREPARE_SIZE) -> dict[str, Any]:
    with staged(dataset_dir(spec, root)) as tmp:
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
                keys = _write_shards(spec, _tsv_samples(Path(tsv)), tmp, prepare_size)
                sources, kind = [tsv], "tsv"
            else:
                keys = _write_shards(spec, _hub_samples(spec, root, downloads), tmp, prepare_size)
                sources, kind = [d["url"] for d in downloads], "hub-shards"
            shards = sorted(p.relative_to(tmp).as_posix() for p in (tmp / "shards").glob("*.tar"))
            manifest = {
                "splits": {"train": "shards"},
                "files": {s: sha256_file(tmp / s) for s in shards},
                "counts": {"pairs": len(keys), "shards": len(shards)},
                "prepare_size": prepare_size,
                "subset": subset_identity(keys, kind),
            }
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    return {
        **manifest,
        "sources": sources,
        "downloads": {d["name"]: {k: d[k] for k in ("size", "sha256", "unverified") if k in d} for d in downloads},
        "verified": True,
        "size_bytes": size,
    }


def verify(spec: DatasetSpec, root: Path, manifest: dict[str, Any]) -> None:
    folder = dataset_dir(spec, root)
    check_hashes(folder, manifest["files"], spec.id)
    if "images" in manifest:
        entries = json.loads((folder / "train.json").read_text(encoding="utf-8"))
        base = Path(manifest["images"].get("root") or folder)
        rels = {
            Path(e["image"]).relative_to(base).as_posix() if Path(e["image"]).is_absolute() else e["image"]
            for e in entries
        }
        digest, _ = files_digest(base, sorted(r for r in rels if (base / r).is_file()))
        if digest != manifest["images"]["sha256"]:
            raise DataError(
                f"{folder}: images differ from manifests/{spec.id}.json; run `clipctl data fetch {spec.id} --force`"
            )


class Cc3mOptions(DatasetOptions):
    """How shards made from the hub or a TSV are prepared (a JSON or folder of your own is used as it is)."""

    prepare_size: int = Field(PREPARE_SIZE, ge=16, le=4096)  # shorter image side, as img2dataset's keep_ratio


class Cc3mPreparer(Preparer):
    """Staged as a whole; only shards record a prepare size (a JSON or folder source has none to compare)."""

    def prepare(self, spec: DatasetSpec, root: Path, options: Any, *, force: bool) -> dict[str, Any]:
        return prepare(spec, root, force=force, prepare_size=options.prepare_size)

    def verify(self, spec: DatasetSpec, root: Path, manifest: dict[str, Any]) -> None:
        verify(spec, root, manifest)

    def made_with(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        return {"prepare_size": manifest["prepare_size"]} if "prepare_size" in manifest else {}


register_dataset(
    DatasetSpec(
        id="cc3m-100k",
        role="train",
        description="CC3M, deterministic 100k pairs, shorter image side 256 px",
        licence=(
            "Conceptual Captions: captions by Google LLC, free to use with attribution; the images belong to "
            "their websites' owners (research use, no redistribution)"
        ),
        folder="cc3m-100k",
        splits={"train": Split("shards", "pairs")},
        default_split="train",
        preparer=Cc3mPreparer(),
        options=Cc3mOptions,
        recipe_keys={"prepare_size": "prepare_size"},
        published="train",
        expect={"pairs": 100_000},
        hub_repo="pixparse/cc3m-wds",
        hub_revision="46f3d69f840e59d77d52e8decfe5baec97e94c7f",
        access_hint=(
            f"or set {CC3M_ARCHIVE_ENV} to the course's cc3m_train_subset.json (with {CC3M_IMAGES_ENV} naming its "
            f"image folder) or archive/folder, or {CC3M_TSV_ENV} to a CC3M TSV of caption<TAB>url"
        ),
        local_copy=(
            f"{CC3M_ARCHIVE_ENV}=<the course's cc3m_train_subset.json> with {CC3M_IMAGES_ENV}=<its image folder>, "
            f"or {CC3M_ARCHIVE_ENV}=<a folder holding a pairs JSON and its images, or a tar/zip of one>, or "
            f"{CC3M_TSV_ENV}=<a CC3M TSV of caption<TAB>url>"
        ),
    )
)
