"""`imagenet-val`: ImageNet-1k validation re-sorted into 1,000 class folders (classification format).

ImageNet needs the user's own access. Sources, in priority order: `ILSVRC2012_img_val.tar` +
`ILSVRC2012_devkit_t12.tar.gz` in `$CLIPCTL_IMAGENET_DIR` or `<root>/downloads/` (md5-verified, read in
place), else the gated Hugging Face copy (`ILSVRC/imagenet-1k`, through huggingface_hub: its cache, the token
from `$HF_TOKEN` or the hub login, only `classes.py` and the val tar by `allow_patterns`, sha256-checked).
`classnames.txt`/`templates.txt` hold the vendored OpenAI names and 80 templates (`clipctl.evaluate.imagenet`)
when the classes are the 1,000 ILSVRC2012 wnids, else the first WordNet synonym and one template.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any, Iterator

from clipctl.data.archive import iter_tar_files
from clipctl.data.fetch import download, verify_file
from clipctl.atomic import atomic_write_bytes, replace_dir
from clipctl.data.manifest import check_hashes, sha256_file, tree_digest
from clipctl.data.hub import hub_snapshot
from clipctl.data.registry import IMAGENET_ENV, MIRROR_ENV, DatasetSpec, dataset_dir, source_url
from clipctl.errors import DataError
from clipctl.report.console import ProgressReporter, info

VAL_TAR, DEVKIT = "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"
HUB_TAR, HUB_CLASSES = "val_images.tar.gz", "classes.py"
FALLBACK_TEMPLATES = ("a photo of a {}.",)
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})(?:_(n\d{8}))?\.JPEG$")


def _local_pair(root: Path) -> tuple[Path, Path] | None:
    for folder in (os.environ.get(IMAGENET_ENV, ""), str(root / "downloads")):
        if folder and (Path(folder) / VAL_TAR).is_file() and (Path(folder) / DEVKIT).is_file():
            return Path(folder) / VAL_TAR, Path(folder) / DEVKIT
    if os.environ.get(IMAGENET_ENV) and not Path(os.environ[IMAGENET_ENV]).is_dir():
        raise DataError(f"{IMAGENET_ENV}={os.environ[IMAGENET_ENV]}: no such folder; it must contain {VAL_TAR} and {DEVKIT}")
    return None


def read_devkit(devkit: Path) -> tuple[dict[int, str], dict[str, str], list[int]]:
    """(ILSVRC2012_ID -> wnid, wnid -> words, ground-truth ID of val image 1..50000) from the devkit archive."""
    from scipy.io import loadmat

    meta = truth = None
    with tarfile.open(devkit) as tar:
        for info in tar:
            if info.name.endswith("data/meta.mat"):
                meta = tar.extractfile(info).read()  # type: ignore[union-attr]
            elif info.name.endswith("data/ILSVRC2012_validation_ground_truth.txt"):
                truth = tar.extractfile(info).read()  # type: ignore[union-attr]
    if meta is None or truth is None:
        raise DataError(f"{devkit}: no data/meta.mat or data/ILSVRC2012_validation_ground_truth.txt; is this the ILSVRC2012 devkit?")
    synsets = loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    id_to_wnid, words = {}, {}
    for row in synsets:
        if int(row["num_children"]) == 0:
            id_to_wnid[int(row["ILSVRC2012_ID"])] = str(row["WNID"])
            words[str(row["WNID"])] = str(row["words"])
    return id_to_wnid, words, [int(line) for line in truth.decode().split()]


def parse_hub_classes(text: str) -> dict[str, str]:
    """wnid -> words from the hub repo's classes.py, read as text (never executed)."""
    return dict(re.findall(r'"(n\d{8})"\s*:\s*"([^"]*)"', text))


def class_text(wnids: list[str], words: dict[str, str]) -> tuple[list[str], list[str]]:
    """Class names and templates: OpenAI's for the real 1,000 classes (comparable zero-shot numbers), else the
    first WordNet synonym of each class from the source's metadata."""
    from clipctl.evaluate.imagenet import imagenet_classnames, imagenet_templates, imagenet_wnids

    if wnids == list(imagenet_wnids()):
        return list(imagenet_classnames()), list(imagenet_templates())
    missing = [w for w in wnids if w not in words]
    if missing:
        raise DataError(f"imagenet-val: no class name for {len(missing)} classes (first: {missing[0]}); the metadata does not match the images")
    return [words[w].split(",")[0].strip() for w in wnids], list(FALLBACK_TEMPLATES)


def _write_folders(tmp: Path, members: Iterator[tuple[str, bytes]], label_of: Any, expected: int) -> int:
    count = 0
    made: set[str] = set()
    with ProgressReporter("imagenet-val", total=expected, unit="img") as progress:
        for name, data in members:
            match = _VAL_NAME.search(Path(name).name)
            if not match:
                continue
            wnid = label_of(int(match.group(1)), match.group(2))
            if wnid not in made:
                (tmp / wnid).mkdir(parents=True, exist_ok=True)
                made.add(wnid)
            (tmp / wnid / f"ILSVRC2012_val_{match.group(1)}.JPEG").write_bytes(data)
            count += 1
            progress.update(1)
    return count


def _hub_files(spec: DatasetSpec, root: Path) -> tuple[dict[str, Path], dict[str, Any], list[str]]:
    """classes.py and the val tar of the hub copy: ({name: path}, {name: size/hashes}, source URLs).

    Through huggingface_hub (its cache and token, only these two files by allow_patterns), or by plain URL
    from `$CLIPCTL_MIRROR` when one is set (no token is sent there)."""
    remotes = [spec.file(HUB_CLASSES), spec.file(HUB_TAR)]
    if not os.environ.get(MIRROR_ENV):
        found = hub_snapshot(spec, remotes, root)
        return ({n: p for n, (p, _) in found.items()}, {n: r for n, (_, r) in found.items()},
                [r.url for r in remotes])
    paths, downloads, sources = {}, {}, []
    for remote in remotes:
        url = source_url(spec, remote.url, remote.name)
        paths[remote.name] = root / "downloads" / remote.name
        downloads[remote.name] = download(url, paths[remote.name], remote, dataset_id=spec.id,
                                          access_hint=spec.access_hint)
        sources.append(url)
    return paths, downloads, sources


def prepare(spec: DatasetSpec, root: Path, force: bool = False) -> dict[str, Any]:
    target = dataset_dir(spec, root)
    tmp = root / f".{spec.folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    expected = spec.expect.get("images", 50_000)
    try:
        local = _local_pair(root)
        if local is not None:
            tar_path, devkit_path = local
            info(f"imagenet-val: using {tar_path} and {devkit_path}")
            downloads = {f.name: verify_file(p, f, spec.id, move_bad=p.parent == root / "downloads")
                         for p, f in ((tar_path, spec.file(VAL_TAR)), (devkit_path, spec.file(DEVKIT)))}
            id_to_wnid, words, truth = read_devkit(devkit_path)

            def label_of(number: int, _wnid: str | None) -> str:
                return id_to_wnid[truth[number - 1]]

            count = _write_folders(tmp, iter_tar_files(tar_path), label_of, expected)
            sources = [str(tar_path), str(devkit_path)]
        else:
            paths, downloads, sources = _hub_files(spec, root)
            words = parse_hub_classes(paths[HUB_CLASSES].read_text(encoding="utf-8"))
            count = _write_folders(tmp, iter_tar_files(paths[HUB_TAR]), lambda _n, wnid: wnid, expected)
        wnids = sorted(p.name for p in tmp.iterdir() if p.is_dir())
        names, templates = class_text(wnids, words)
        atomic_write_bytes(tmp / "classnames.txt", "".join(n + "\n" for n in names).encode())
        atomic_write_bytes(tmp / "templates.txt", "".join(t + "\n" for t in templates).encode())
        _check_counts(spec, len(wnids), count)
        digest, _ = tree_digest(tmp, "*.JPEG")
        files = {name: sha256_file(tmp / name) for name in ("classnames.txt", "templates.txt")}
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"sources": sources, "downloads": downloads, "files": files, "images": {"count": count, "sha256": digest},
            "counts": {"classes": len(wnids), "images": count}, "splits": {"val": "."}, "verified": True, "size_bytes": size}


def _check_counts(spec: DatasetSpec, classes: int, images: int) -> None:
    want_classes, want_images = spec.expect.get("classes"), spec.expect.get("images")
    if (want_classes is not None and classes != want_classes) or (want_images is not None and images != want_images):
        raise DataError(f"imagenet-val: {classes} classes / {images} images, expected {want_classes} / {want_images}; "
                        f"the archive is incomplete or not the ILSVRC2012 validation set")


def verify(spec: DatasetSpec, root: Path, manifest: dict[str, Any]) -> None:
    folder = dataset_dir(spec, root)
    check_hashes(folder, manifest["files"], spec.id)
    digest, count = tree_digest(folder, "*.JPEG")
    if count != manifest["images"]["count"] or digest != manifest["images"]["sha256"]:
        raise DataError(f"{folder}: images differ from manifests/{spec.id}.json ({count} files, digest {digest[:12]}; expected "
                        f"{manifest['images']['count']}, {manifest['images']['sha256'][:12]}); run `clipctl data fetch {spec.id} --force`")

