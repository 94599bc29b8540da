"""The dataset registry: ids, roles, sources, expected files, sizes, checksums and licences.

Every real URL lives here and only here; `CLIPCTL_MIRROR=<base URL>` replaces each source with
`<base>/<dataset id>/<file name>` (tests point it at a local server; sites can host their own copy).
Hub files (`hub_repo` at `hub_revision`) go through huggingface_hub unless a mirror is set; a hub mirror
is `HF_ENDPOINT`. A `files` entry with a sha256 pins a hub file's content (else the hub's own hash is used).
`resolve()` turns a dataset reference from a recipe ("coco-karpathy-test", "shapes:val", or a path) into
the file or folder the readers in `clipctl.data.datasets` open.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

from clipctl.data.manifest import read_manifest
from clipctl.errors import DataError

MIRROR_ENV = "CLIPCTL_MIRROR"
IMAGENET_ENV = "CLIPCTL_IMAGENET_DIR"
CC3M_ARCHIVE_ENV = "CLIPCTL_CC3M_ARCHIVE"
CC3M_TSV_ENV = "CLIPCTL_CC3M_TSV"
CC3M_IMAGES_ENV = "CLIPCTL_CC3M_IMAGES"
HF_TOKEN_ENV = "HF_TOKEN"


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file; `size`/`md5`/`sha256` are checked when known (else recorded at first fetch)."""

    name: str  # file name under <root>/downloads/ and on a mirror
    url: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    id: str
    role: str
    description: str
    licence: str
    folder: str  # under the data root
    splits: dict[str, str]  # split -> path under `folder` (the manifest may override it)
    default_split: str
    expect: dict[str, int] = field(default_factory=dict)  # counts checked after preparation
    files: tuple[RemoteFile, ...] = ()
    image_url: str = ""  # per-image fallback source: "{image}" is the annotation's relative path
    hub_repo: str = ""  # Hugging Face dataset repo of the hub source
    hub_revision: str = ""
    access_hint: str = ""  # what to provide when the source is gated or unreachable (one clause)

    def file(self, name: str) -> RemoteFile:
        return next(f for f in self.files if f.name == name)


_COCO_LICENCE = (
    "COCO captions/annotations: CC BY 4.0 (cocodataset.org/#termsofuse); the images come from Flickr "
    "under their owners' licences (Flickr terms of use)"
)
_COCO_ZIP = RemoteFile(
    "val2014.zip",
    "http://images.cocodataset.org/zips/val2014.zip",
    size=6_645_013_297,
    md5="a3d79f5ed8d289b7a7554ce06a5782b3",
)
_COCO_IMAGES = "http://images.cocodataset.org/{image}"
_COCO_HINT = "or place val2014.zip (or the val2014/ images) under <data root>/downloads/ yourself"

REGISTRY: dict[str, DatasetSpec] = {
    spec.id: spec
    for spec in (
        DatasetSpec(
            id="shapes",
            role="all",
            description="synthetic benchmark, generated locally (64 classes, long tail, noisy captions)",
            licence="generated locally by clipctl (MIT, like clipctl itself)",
            folder="shapes",
            splits={
                "train": "train.json",
                "val": "val.json",
                "test": "test.json",
                "zeroshot_val": "zeroshot_val",
                "zeroshot": "zeroshot",
            },
            default_split="train",
        ),
        DatasetSpec(
            id="cc3m-100k",
            role="train",
            description="CC3M, deterministic 100k pairs, shorter image side 256 px",
            licence=(
                "Conceptual Captions: captions by Google LLC, free to use with attribution; the images belong to "
                "their websites' owners (research use, no redistribution)"
            ),
            folder="cc3m-100k",
            splits={"train": "shards"},
            default_split="train",
            expect={"pairs": 100_000},
            hub_repo="pixparse/cc3m-wds",
            hub_revision="46f3d69f840e59d77d52e8decfe5baec97e94c7f",
            access_hint=(
                f"or set {CC3M_ARCHIVE_ENV} to the course's cc3m_train_subset.json (with {CC3M_IMAGES_ENV} "
                f"naming its image folder) or archive/folder, or {CC3M_TSV_ENV} to a CC3M TSV of "
                "caption<TAB>url"
            ),
        ),
        DatasetSpec(
            id="coco-karpathy-test",
            role="eval",
            description="MSCOCO Karpathy test: 5,000 images, ~25k captions",
            licence=_COCO_LICENCE,
            folder="coco",
            splits={"test": "karpathy_test.json"},
            default_split="test",
            expect={"images": 5_000, "captions_min": 25_000},
            files=(
                RemoteFile(
                    "coco_karpathy_test.json",
                    "https://storage.googleapis.com/sfr-vision-language-research/datasets/coco_karpathy_test.json",
                    md5="3ff34b0ef2db02d01c37399f6a2a6cd1",
                ),
                _COCO_ZIP,
            ),
            image_url=_COCO_IMAGES,
            access_hint=_COCO_HINT,
        ),
        DatasetSpec(
            id="coco-val-5k",
            role="eval (parity)",
            description="MSCOCO Karpathy val (course coco_val.json): 5,000 images",
            licence=_COCO_LICENCE,
            folder="coco",
            splits={"val": "karpathy_val.json"},
            default_split="val",
            expect={"images": 5_000, "captions_min": 25_000},
            files=(
                RemoteFile(
                    "coco_karpathy_val.json",
                    "https://storage.googleapis.com/sfr-vision-language-research/datasets/coco_karpathy_val.json",
                    md5="b273847456ef5580e33713b1f7de52a0",
                ),
                _COCO_ZIP,
            ),
            image_url=_COCO_IMAGES,
            access_hint=_COCO_HINT,
        ),
        DatasetSpec(
            id="imagenet-val",
            role="eval",
            description="ImageNet-1k val: 1,000 classes x 50 (your own access)",
            licence=(
                "ImageNet: non-commercial research and education only, no redistribution (image-net.org "
                "terms of access)"
            ),
            folder="imagenet-val",
            splits={"val": ".", "select": "select.txt", "test": "test.txt"},
            default_split="val",
            expect={"classes": 1_000, "images": 50_000},
            files=(
                RemoteFile(
                    "ILSVRC2012_img_val.tar",
                    "https://image-net.org/data/ILSVRC/2012/ILSVRC2012_img_val.tar",
                    size=6_744_924_160,
                    md5="29b22e2961454d5413ddabcf34fc5622",
                ),
                RemoteFile(
                    "ILSVRC2012_devkit_t12.tar.gz",
                    "https://image-net.org/data/ILSVRC/2012/ILSVRC2012_devkit_t12.tar.gz",
                    md5="fa75699e90414af021442c21a62c3abf",
                ),
                RemoteFile(
                    "val_images.tar.gz",
                    "https://huggingface.co/datasets/ILSVRC/imagenet-1k/resolve/"
                    "4603483700ee984ea9debe3ddbfdeae86f6489eb/data/val_images.tar.gz",
                ),
                RemoteFile(
                    "classes.py",
                    "https://huggingface.co/datasets/ILSVRC/imagenet-1k/resolve/"
                    "4603483700ee984ea9debe3ddbfdeae86f6489eb/classes.py",
                ),
            ),
            hub_repo="ILSVRC/imagenet-1k",
            hub_revision="4603483700ee984ea9debe3ddbfdeae86f6489eb",
            access_hint=(
                f"put ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz (from image-net.org) in ${IMAGENET_ENV} "
                f"or <data root>/downloads/, or accept the terms of huggingface.co/datasets/ILSVRC/imagenet-1k and set "
                f"{HF_TOKEN_ENV}"
            ),
        ),
    )
}


def get_spec(dataset_id: str) -> DatasetSpec:
    spec = REGISTRY.get(dataset_id)
    if spec is None:
        hint = difflib.get_close_matches(dataset_id, list(REGISTRY), n=1)
        more = f"did you mean {hint[0]}? " if hint else ""
        raise DataError(f"{dataset_id}: unknown dataset id; {more}known: {', '.join(REGISTRY)} (`clipctl data ls`)")
    return spec


def source_url(spec: DatasetSpec, url: str, name: str) -> str:
    """The URL to fetch: the registry's, or `$CLIPCTL_MIRROR/<id>/<name>` when a mirror is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    return f"{mirror.rstrip('/')}/{spec.id}/{name}" if mirror else url


def dataset_dir(spec: DatasetSpec, root: Path) -> Path:
    return Path(root) / spec.folder


def resolve(ref: str, root: Path) -> Path:
    """A dataset reference ("ID[:split]" or a filesystem path) -> the pairs/retrieval JSON or folder to read.

    A registry dataset that is not present (no manifest) is a DataError naming `clipctl data fetch ID`.
    """
    root = Path(root)
    dataset_id, _, split = ref.partition(":")
    if dataset_id in REGISTRY:
        spec = REGISTRY[dataset_id]
        split = split or spec.default_split
        if split not in spec.splits:
            raise DataError(f"{ref}: {dataset_id} has no split {split!r}; choose from {', '.join(spec.splits)}")
        manifest = read_manifest(root, dataset_id)
        if manifest is None:
            raise DataError(
                f"{ref}: dataset {dataset_id} is not present under {root}; run `clipctl data fetch {dataset_id}`"
            )
        path = dataset_dir(spec, root) / manifest.get("splits", {}).get(split, spec.splits[split])
        if not path.exists():
            raise DataError(
                f"{ref}: {path} is missing although manifests/{dataset_id}.json exists; "
                f"run `clipctl data fetch {dataset_id} --force`"
            )
        return path
    path = Path(ref).expanduser()
    if path.exists():
        return path
    hint = difflib.get_close_matches(dataset_id, list(REGISTRY), n=1)
    more = f"; did you mean {hint[0]}?" if hint else f"; dataset ids: {', '.join(REGISTRY)}"
    raise DataError(f"{ref}: neither a dataset id nor an existing file or folder{more}")
