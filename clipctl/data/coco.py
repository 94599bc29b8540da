"""COCO Karpathy retrieval splits (`coco-karpathy-test`, `coco-val-5k`).

The annotation JSON (md5 from the registry) is already in the retrieval format; the 5,000 val2014 images
it uses come, in priority order, from a `downloads/val2014/` folder the user placed, the official
val2014.zip (md5-verified, only the needed members extracted), or one request per image.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from clipctl.atomic import atomic_write_json
from clipctl.console import ProgressReporter, info
from clipctl.data.archive import extract, unsafe_reason
from clipctl.data.fetch import SourceUnavailable, download, run_sources
from clipctl.data.localfiles import regular_file_inside
from clipctl.data.manifest import check_hashes, files_digest, sha256_file
from clipctl.data.records import (
    Benchmark,
    DatasetSpec,
    Preparer,
    RemoteFile,
    Split,
    dataset_dir,
    register_dataset,
    source_url,
)
from clipctl.errors import DataError

IMAGE_WORKERS = 8
UNVERIFIED_WHY = (
    "no published checksum (per-image downloads or a local copy): checked as complete, decodable "
    "images; `data verify` re-checks them against the sha256 recorded at fetch"
)


def read_karpathy(path: Path) -> list[tuple[str, list[str]]]:
    """[(relative image path, captions)] from a Karpathy-split retrieval JSON, validated."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not valid JSON ({err}); delete it and fetch again") from None
    if not isinstance(data, list):
        raise DataError(f'{path}: expected a JSON list of {{"image": path, "caption": [str, ...]}}')
    entries = []
    for i, entry in enumerate(data):
        caps = entry.get("caption") if isinstance(entry, dict) else None
        image = entry.get("image") if isinstance(entry, dict) else None
        if not isinstance(image, str) or not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise DataError(f'{path}: entry {i}: expected {{"image": str, "caption": [str, ...]}}')
        if unsafe_reason(image):
            raise DataError(f"{path}: entry {i}: image path {image!r} refused ({unsafe_reason(image)})")
        entries.append((image, caps))
    return entries


def _present(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _from_local_folder(folder: Path, downloads: Path, missing: list[str]) -> str:
    """Copy from images the user placed under downloads/ (same relative paths as the annotations): regular
    files inside downloads/ only."""
    placed = {
        rel: regular_file_inside(downloads / rel, downloads) for rel in missing if os.path.lexists(downloads / rel)
    }
    absent = [rel for rel in missing if not _present(downloads / rel)]
    if absent:
        raise SourceUnavailable(f"{downloads}: {len(absent)} needed images are absent (first: {absent[0]})")
    for rel in missing:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(placed[rel], folder / f"{rel}.tmp")
        os.replace(folder / f"{rel}.tmp", folder / rel)
    return str(downloads / Path(missing[0]).parent)


def _from_zip(spec: DatasetSpec, root: Path, folder: Path, missing: list[str], hashes: dict[str, Any]) -> str:
    zip_file = spec.file("val2014.zip")
    url = source_url(spec, zip_file.url, zip_file.name)
    archive = root / "downloads" / zip_file.name
    hashes[zip_file.name] = download(url, archive, zip_file, dataset_id=spec.id, access_hint=spec.access_hint)
    wanted = set(missing)
    info(f"{spec.id}: extracting {len(wanted)} images from {archive.name}")
    with tempfile.TemporaryDirectory(prefix=f".extract-{spec.id}-", dir=folder) as scratch:
        staging = Path(scratch) / "members"
        got = set(extract(archive, staging, select=wanted.__contains__))
        if got != wanted:
            first = sorted(wanted - got)[0]
            raise DataError(f"{archive}: {len(wanted - got)} needed images are not in the archive (first: {first})")
        for rel in missing:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, folder / rel)
    return url


def _per_image(spec: DatasetSpec, folder: Path, missing: list[str]) -> str:
    info(f"{spec.id}: downloading {len(missing)} images one by one")

    def one(rel: str) -> None:
        url = source_url(spec, spec.image_url.format(image=rel), rel)
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        download(
            url,
            folder / rel,
            RemoteFile(Path(rel).name, url),
            dataset_id=spec.id,
            access_hint=spec.access_hint,
            progress=False,
            quarantine_dir=folder.parent / "downloads" / "quarantine",
        )

    with (
        ProgressReporter(f"{spec.id} images", total=len(missing), unit="img") as progress,
        ThreadPoolExecutor(IMAGE_WORKERS) as pool,
    ):
        for _ in pool.map(one, missing):
            progress.update(1)
    return source_url(spec, spec.image_url, "<image>")


def prepare(spec: DatasetSpec, root: Path, force: bool = False) -> dict[str, Any]:
    """Download, verify and lay out one Karpathy split; returns the manifest (written by the caller)."""
    ann = spec.files[0]
    downloads = root / "downloads"
    ann_path = downloads / ann.name
    if force and ann_path.exists() and not ann.md5 and not ann.sha256:
        ann_path.unlink()  # recorded-at-first-fetch files are re-downloaded on --force
    sources = [source_url(spec, ann.url, ann.name)]
    hashes = {ann.name: download(sources[0], ann_path, ann, dataset_id=spec.id, access_hint=spec.access_hint)}
    entries = read_karpathy(ann_path)
    folder = dataset_dir(spec, root)
    folder.mkdir(parents=True, exist_ok=True)
    needed = sorted({image for image, _ in entries})
    missing = [rel for rel in needed if force or not _present(folder / rel)]
    checked = 0  # images that come from the md5-verified zip in this fetch; the others have no published hash
    if missing:
        attempts = []
        if (downloads / Path(missing[0]).parent).is_dir():
            attempts.append(("local images", lambda: _from_local_folder(folder, downloads, missing)))
        attempts += [
            ("val2014.zip", lambda: _from_zip(spec, root, folder, missing, hashes)),
            ("per-image", lambda: _per_image(spec, folder, missing)),
        ]
        sources.append(run_sources(spec.id, attempts))
        checked = len(missing) if "val2014.zip" in hashes else 0
    split, rel_json = next((name, entry.path) for name, entry in spec.splits.items())
    atomic_write_json(folder / rel_json, [{"image": image, "caption": caps} for image, caps in entries])
    digest, count = files_digest(folder, needed)
    captions = sum(len(caps) for _, caps in entries)
    _check_counts(spec, count, captions)
    unverified = {"images": count - checked, "why": UNVERIFIED_WHY} if count > checked else None
    return {
        "sources": sources,
        "downloads": hashes,
        "files": {rel_json: sha256_file(folder / rel_json)},
        **({"unverified": unverified} if unverified else {}),
        "images": {"count": count, "sha256": digest},
        "counts": {"images": count, "captions": captions},
        "splits": {split: rel_json},
        "verified": True,
        "size_bytes": sum((folder / rel).stat().st_size for rel in needed) + (folder / rel_json).stat().st_size,
    }


def _check_counts(spec: DatasetSpec, images: int, captions: int) -> None:
    want_images, want_captions = spec.expect.get("images"), spec.expect.get("captions_min")
    if want_images is not None and images != want_images:
        raise DataError(
            f"{spec.id}: {images} images, expected {want_images}; run `clipctl data fetch {spec.id} --force`"
        )
    if want_captions is not None and captions < want_captions:
        raise DataError(
            f"{spec.id}: {captions} captions, expected at least {want_captions}; the annotation file is not "
            "the Karpathy split"
        )


def verify(spec: DatasetSpec, root: Path, manifest: dict[str, Any]) -> None:
    """Annotation sha256, then every image against the recorded digest, then the counts."""
    folder = dataset_dir(spec, root)
    check_hashes(folder, manifest["files"], spec.id)
    rel_json = next(iter(manifest["files"]))
    entries = read_karpathy(folder / rel_json)
    needed = sorted({image for image, _ in entries})
    absent = [rel for rel in needed if not (folder / rel).is_file()]
    if absent:
        raise DataError(
            f"{folder / absent[0]}: missing ({len(absent)} images absent); run `clipctl data fetch {spec.id} --force`"
        )
    digest, count = files_digest(folder, needed)
    if digest != manifest["images"]["sha256"]:
        raise DataError(
            f"{folder}: images differ from manifests/{spec.id}.json (digest {digest[:12]}, expected "
            f"{manifest['images']['sha256'][:12]}); run `clipctl data fetch {spec.id} --force`"
        )
    _check_counts(spec, count, sum(len(caps) for _, caps in entries))


class KarpathyPreparer(Preparer):
    """In place, not staged: images already present are kept (a second fetch downloads only what is missing), and
    both Karpathy splits share the one `coco/` folder of val2014 images."""

    def prepare(self, spec: DatasetSpec, root: Path, options: Any, *, force: bool) -> dict[str, Any]:
        return prepare(spec, root, force=force)

    def verify(self, spec: DatasetSpec, root: Path, manifest: dict[str, Any]) -> None:
        verify(spec, root, manifest)


def karpathy_split(
    dataset_id: str, role: str, description: str, split: str, md5: str, *benchmarks: Benchmark
) -> DatasetSpec:
    """The record of one Karpathy split: its annotation JSON plus the 5,000 val2014 images it uses, in `coco/`."""
    annotations = f"coco_karpathy_{split}.json"
    return DatasetSpec(
        id=dataset_id,
        role=role,
        description=description,
        licence=(
            "COCO captions/annotations: CC BY 4.0 (cocodataset.org/#termsofuse); the images come from Flickr "
            "under their owners' licences (Flickr terms of use)"
        ),
        folder="coco",
        splits={split: Split(f"karpathy_{split}.json", "retrieval")},
        default_split=split,
        preparer=KarpathyPreparer(),
        benchmarks=benchmarks,
        published="retrieval",
        expect={"images": 5_000, "captions_min": 25_000},
        files=(
            RemoteFile(
                annotations,
                f"https://storage.googleapis.com/sfr-vision-language-research/datasets/{annotations}",
                md5=md5,
            ),
            RemoteFile(
                "val2014.zip",
                "http://images.cocodataset.org/zips/val2014.zip",
                size=6_645_013_297,
                md5="a3d79f5ed8d289b7a7554ce06a5782b3",
            ),
        ),
        image_url="http://images.cocodataset.org/{image}",
        access_hint="or place val2014.zip (or the val2014/ images) under <data root>/downloads/ yourself",
    )


register_dataset(
    karpathy_split(
        "coco-karpathy-test",
        "eval",
        "MSCOCO Karpathy test: 5,000 images, ~25k captions",
        "test",
        "3ff34b0ef2db02d01c37399f6a2a6cd1",
        Benchmark("coco", ("test",), help="MSCOCO 5k Karpathy test retrieval (coco-karpathy-test)."),
    )
)
register_dataset(
    karpathy_split(
        "coco-val-5k",
        "eval (parity)",
        "MSCOCO Karpathy val (course coco_val.json): 5,000 images",
        "val",
        "b273847456ef5580e33713b1f7de52a0",
    )
)
