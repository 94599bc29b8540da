"""`imagenet-val`: ImageNet-1k validation re-sorted into 1,000 class folders (classification format).

ImageNet needs the user's own access. Sources, in priority order: `$CLIPCTL_IMAGENET_DIR` holding an
extracted `val/<wnid>/*.JPEG` (hard-linked, never changed), the flat `ILSVRC2012_val_*.JPEG` files plus
`ILSVRC2012_devkit_t12.tar.gz`, or `ILSVRC2012_img_val.tar` + the devkit (md5-verified, read in place); the
two tars in `<root>/downloads/`; else the gated Hugging Face copy (`ILSVRC/imagenet-1k`, through
huggingface_hub: its cache, the token from `$HF_TOKEN` or the hub login, only `classes.py` and the val tar by
`allow_patterns`, sha256-checked). `select.txt`/`test.txt` list the `imagenet-val:select`/`:test` splits
(`selection_split`).
`classnames.txt`/`templates.txt` hold the vendored OpenAI names and 80 templates (`clipctl.data.imagenet_classes`)
when the classes are the 1,000 ILSVRC2012 wnids, else the first WordNet synonym and one template.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipctl.atomic import atomic_write_bytes
from clipctl.console import ProgressReporter, info
from clipctl.data.archive import iter_tar_files
from clipctl.data.fetch import download, verify_file
from clipctl.data.hub import hub_snapshot
from clipctl.data.imagenet_classes import imagenet_classnames, imagenet_templates, imagenet_wnids
from clipctl.data.localfiles import regular_file_inside
from clipctl.data.manifest import check_hashes, sha256_file, tree_digest
from clipctl.data.records import (
    MIRROR_ENV,
    Benchmark,
    DatasetSpec,
    Preparer,
    RemoteFile,
    Split,
    dataset_dir,
    register_dataset,
    source_url,
)
from clipctl.data.staging import staged
from clipctl.errors import DataError

IMAGENET_ENV = "CLIPCTL_IMAGENET_DIR"
HF_TOKEN_ENV = "HF_TOKEN"
VAL_TAR, DEVKIT = "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"
HUB_TAR, HUB_CLASSES = "val_images.tar.gz", "classes.py"
FALLBACK_TEMPLATES = ("a photo of a {}.",)
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})(?:_(n\d{8}))?\.JPEG$")
SELECT_EVERY = 5  # imagenet-val:select is a fifth of every class
SPLIT_FILES = {"select": "select.txt", "test": "test.txt"}


_WNID = re.compile(r"n\d{8}$")
_EXPECTED_LAYOUTS = (
    f"val/ with the 1,000 wnid folders (val/n01440764/*.JPEG ...), the 50,000 flat "
    f"ILSVRC2012_val_*.JPEG files plus {DEVKIT}, or {VAL_TAR} plus {DEVKIT}"
)


@dataclass(frozen=True)
class LocalSource:
    """A user's ImageNet copy: `kind` is "tars" (val tar + devkit), "folders" (extracted val/<wnid>/) or
    "flat" (the 50k val files in one folder + devkit)."""

    kind: str
    path: Path
    within: Path  # the folder the user named: nothing is read through a link out of it
    devkit: Path | None = None


def _wnid_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _WNID.match(p.name))


def _layout(folder: Path) -> LocalSource | None:
    """The layout `folder` holds, or None when it is none of the three."""
    devkit = folder / DEVKIT
    if (folder / VAL_TAR).is_file() and devkit.is_file():
        return LocalSource("tars", folder / VAL_TAR, folder, devkit)
    for candidate in (folder / "val", folder):
        if not candidate.is_dir():
            continue
        if _wnid_folders(candidate):
            return LocalSource("folders", candidate, folder)
        if devkit.is_file() and next(candidate.glob("ILSVRC2012_val_*.JPEG"), None) is not None:
            return LocalSource("flat", candidate, folder, devkit)
    return None


def _describe(folder: Path) -> str:
    """What a folder holds, in a few words, for the one-line error."""
    entries = sorted(folder.iterdir())
    dirs = [p.name for p in entries if p.is_dir()]
    files = [p.name for p in entries if p.is_file()]
    shown = ", ".join((dirs + files)[:3]) + (" ..." if len(entries) > 3 else "")
    return f"{len(dirs)} folders and {len(files)} files" + (f" ({shown})" if entries else "")


def _local_source(root: Path) -> LocalSource | None:
    """The user's copy in `$CLIPCTL_IMAGENET_DIR` (any of the three layouts) or the tars in <root>/downloads/."""
    env = os.environ.get(IMAGENET_ENV, "")
    if env:
        folder = Path(env).expanduser()
        if not folder.is_dir():
            raise DataError(f"{IMAGENET_ENV}={env}: no such folder; expected a folder holding {_EXPECTED_LAYOUTS}")
        found = _layout(folder)
        if found is None:
            raise DataError(f"{IMAGENET_ENV}={env}: found {_describe(folder)}; expected {_EXPECTED_LAYOUTS}")
        return found
    downloads = root / "downloads"
    if (downloads / VAL_TAR).is_file() and (downloads / DEVKIT).is_file():
        return LocalSource("tars", downloads / VAL_TAR, downloads, downloads / DEVKIT)
    return None


def _link_folders(source: Path, within: Path, tmp: Path, expected: int) -> int:
    """Hard-link (or copy, across file systems) every val/<wnid>/*.JPEG into `tmp`: no 6 GB duplicate where
    the file system allows it, and the user's folder is never changed. Only regular files inside `within`."""
    count = 0
    with ProgressReporter("imagenet-val", total=expected, unit="img") as progress:
        for wnid in _wnid_folders(source):
            (tmp / wnid.name).mkdir()
            for image in sorted(wnid.glob("*.JPEG")):
                real = regular_file_inside(image, within)
                try:
                    os.link(real, tmp / wnid.name / image.name)
                except OSError:
                    shutil.copyfile(real, tmp / wnid.name / image.name)
                count += 1
                progress.update(1)
    return count


def _folder_words(wnids: list[str], source: Path) -> dict[str, str]:
    """Extracted folders carry no class names: they must be ILSVRC2012 wnids, named from the vendored list."""
    unknown = sorted(set(wnids) - set(imagenet_wnids()))
    if unknown:
        raise DataError(
            f"{source}: {len(unknown)} class folders are not ILSVRC2012 wnids (first: {unknown[0]}); "
            f"expected {_EXPECTED_LAYOUTS}"
        )
    return dict(zip(imagenet_wnids(), imagenet_classnames()))


def selection_split(folder: Path) -> tuple[list[str], list[str]]:
    """(`imagenet-val:select`, `imagenet-val:test`) as `wnid/file` lines: in each class folder, with the files
    sorted by name, every fifth file from the first (positions 0, 5, 10, ...) selects, the rest test.

    Why by name: the split depends on nothing but the file names, so it is the same on every machine
    (ImageNet: 10 of every class's 50 files, 10,000 select and 40,000 test images).
    """
    select, test = [], []
    for wnid in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        for i, name in enumerate(sorted(p.name for p in (folder / wnid).glob("*.JPEG"))):
            (select if i % SELECT_EVERY == 0 else test).append(f"{wnid}/{name}")
    return select, test


def _write_split_lists(tmp: Path) -> dict[str, str]:
    select, test = selection_split(tmp)
    for name, lines in ((SPLIT_FILES["select"], select), (SPLIT_FILES["test"], test)):
        atomic_write_bytes(tmp / name, "".join(line + "\n" for line in lines).encode())
    return {"val": ".", **SPLIT_FILES}


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
        raise DataError(
            f"{devkit}: no data/meta.mat or data/ILSVRC2012_validation_ground_truth.txt; is this the ILSVRC2012 devkit?"
        )
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
    if wnids == list(imagenet_wnids()):
        return list(imagenet_classnames()), list(imagenet_templates())
    missing = [w for w in wnids if w not in words]
    if missing:
        raise DataError(
            f"imagenet-val: no class name for {len(missing)} classes (first: {missing[0]}); the metadata does "
            "not match the images"
        )
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
        return ({n: p for n, (p, _) in found.items()}, {n: r for n, (_, r) in found.items()}, [r.url for r in remotes])
    paths, downloads, sources = {}, {}, []
    for remote in remotes:
        url = source_url(spec, remote.url, remote.name)
        paths[remote.name] = root / "downloads" / remote.name
        downloads[remote.name] = download(
            url, paths[remote.name], remote, dataset_id=spec.id, access_hint=spec.access_hint
        )
        sources.append(url)
    return paths, downloads, sources


# Over 60 lines: the three ImageNet source layouts side by side inside one staged folder.
def prepare(spec: DatasetSpec, root: Path, force: bool = False) -> dict[str, Any]:
    expected = spec.expect.get("images", 50_000)
    with staged(dataset_dir(spec, root)) as tmp:
        local = _local_source(root)
        if local is not None and local.kind == "folders":
            info(f"imagenet-val: using the extracted class folders in {local.path}")
            downloads, sources = {}, [str(local.path)]
            count = _link_folders(local.path, local.within, tmp, expected)
            words = _folder_words([p.name for p in _wnid_folders(tmp)], local.path)
        elif local is not None:
            assert local.devkit is not None
            info(f"imagenet-val: using {local.path} and {local.devkit}")
            within = local.within
            checked = [(regular_file_inside(local.devkit, within), spec.file(DEVKIT))]
            if local.kind == "tars":
                checked.append((regular_file_inside(local.path, within), spec.file(VAL_TAR)))
            downloads = {f.name: verify_file(p, f, spec.id, move_bad=within == root / "downloads") for p, f in checked}
            id_to_wnid, words, truth = read_devkit(local.devkit)

            def label_of(number: int, _wnid: str | None) -> str:
                return id_to_wnid[truth[number - 1]]

            members = (
                iter_tar_files(local.path)
                if local.kind == "tars"
                else (
                    (p.name, regular_file_inside(p, within).read_bytes())
                    for p in sorted(local.path.glob("ILSVRC2012_val_*.JPEG"))
                )
            )
            count = _write_folders(tmp, members, label_of, expected)
            sources = [str(local.path), str(local.devkit)]
        else:
            paths, downloads, sources = _hub_files(spec, root)
            words = parse_hub_classes(paths[HUB_CLASSES].read_text(encoding="utf-8"))
            count = _write_folders(tmp, iter_tar_files(paths[HUB_TAR]), lambda _n, wnid: wnid, expected)
        wnids = sorted(p.name for p in tmp.iterdir() if p.is_dir())
        names, templates = class_text(wnids, words)
        atomic_write_bytes(tmp / "classnames.txt", "".join(n + "\n" for n in names).encode())
        atomic_write_bytes(tmp / "templates.txt", "".join(t + "\n" for t in templates).encode())
        _check_counts(spec, len(wnids), count)
        splits = _write_split_lists(tmp)
        digest, _ = tree_digest(tmp, "*.JPEG")
        files = {name: sha256_file(tmp / name) for name in ("classnames.txt", "templates.txt", *SPLIT_FILES.values())}
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    return {
        "sources": sources,
        "downloads": downloads,
        "files": files,
        "images": {"count": count, "sha256": digest},
        "counts": {"classes": len(wnids), "images": count},
        "splits": splits,
        "verified": True,
        "size_bytes": size,
    }


def _check_counts(spec: DatasetSpec, classes: int, images: int) -> None:
    want_classes, want_images = spec.expect.get("classes"), spec.expect.get("images")
    if (want_classes is not None and classes != want_classes) or (want_images is not None and images != want_images):
        raise DataError(
            f"imagenet-val: {classes} classes / {images} images, expected {want_classes} / {want_images}; "
            f"the archive is incomplete or not the ILSVRC2012 validation set"
        )


def verify(spec: DatasetSpec, root: Path, manifest: dict[str, Any]) -> None:
    folder = dataset_dir(spec, root)
    check_hashes(folder, manifest["files"], spec.id)
    digest, count = tree_digest(folder, "*.JPEG")
    if count != manifest["images"]["count"] or digest != manifest["images"]["sha256"]:
        raise DataError(
            f"{folder}: images differ from manifests/{spec.id}.json ({count} files, digest {digest[:12]}; expected "
            f"{manifest['images']['count']}, {manifest['images']['sha256'][:12]}); run `clipctl data fetch "
            f"{spec.id} --force`"
        )


class ImageNetPreparer(Preparer):
    """Re-sorts the user's copy (or the gated hub copy) into class folders, staged as a whole."""

    def prepare(self, spec: DatasetSpec, root: Path, options: Any, *, force: bool) -> dict[str, Any]:
        return prepare(spec, root, force=force)

    def verify(self, spec: DatasetSpec, root: Path, manifest: dict[str, Any]) -> None:
        verify(spec, root, manifest)


_HUB_REVISION = "4603483700ee984ea9debe3ddbfdeae86f6489eb"
_HUB_URL = f"https://huggingface.co/datasets/ILSVRC/imagenet-1k/resolve/{_HUB_REVISION}/"
_ILSVRC_URL = "https://image-net.org/data/ILSVRC/2012/"

register_dataset(
    DatasetSpec(
        id="imagenet-val",
        role="eval",
        description="ImageNet-1k val: 1,000 classes x 50 (your own access)",
        licence=(
            "ImageNet: non-commercial research and education only, no redistribution (image-net.org terms of access)"
        ),
        folder="imagenet-val",
        splits={
            "val": Split(".", "classification"),
            "select": Split(SPLIT_FILES["select"], "classification"),
            "test": Split(SPLIT_FILES["test"], "classification"),
        },
        default_split="val",
        preparer=ImageNetPreparer(),
        benchmarks=(
            Benchmark(
                "imagenet",
                ("test",),
                help="ImageNet-1k zero-shot on imagenet-val:test (the 40k that selection never sees), 1,000 OpenAI "
                "names, 80 templates.",
                note="zero-shot on imagenet-val:test, the 40k images model selection never sees",
            ),
            Benchmark(
                "imagenet-full",
                ("val",),
                help="ImageNet-1k zero-shot on all 50k val images, as the published figures were measured (includes "
                "the selection fifth).",
                note="zero-shot on all 50k imagenet-val images (published-figure parity; includes the selection fifth)",
                reported=False,
            ),
        ),
        published="zeroshot",
        expect={"classes": 1_000, "images": 50_000},
        files=(
            RemoteFile(VAL_TAR, _ILSVRC_URL + VAL_TAR, size=6_744_924_160, md5="29b22e2961454d5413ddabcf34fc5622"),
            RemoteFile(DEVKIT, _ILSVRC_URL + DEVKIT, md5="fa75699e90414af021442c21a62c3abf"),
            RemoteFile(HUB_TAR, _HUB_URL + "data/" + HUB_TAR),
            RemoteFile(HUB_CLASSES, _HUB_URL + HUB_CLASSES),
        ),
        hub_repo="ILSVRC/imagenet-1k",
        hub_revision=_HUB_REVISION,
        access_hint=(
            f"put {VAL_TAR} and {DEVKIT} (from image-net.org) in ${IMAGENET_ENV} or <data root>/downloads/, or accept "
            f"the terms of huggingface.co/datasets/ILSVRC/imagenet-1k and set {HF_TOKEN_ENV}"
        ),
        local_copy=(
            f"{IMAGENET_ENV}=<folder> holding val/<wnid>/*.JPEG, or the flat ILSVRC2012_val_*.JPEG files with "
            f"{DEVKIT}, or {VAL_TAR} with {DEVKIT} (the two tars may also sit in <data root>/downloads/)"
        ),
    )
)
