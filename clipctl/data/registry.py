"""The catalogue of datasets: every registered record, looked up by id, and the one parser of dataset references.

Importing this module imports the built-in dataset families, each of which registers its records where it
defines them (`clipctl.data.records.register_dataset`); a dataset defined elsewhere registers itself when its
module is imported. A reference is "ID[:split]" for a registered dataset, or a path to a file or folder of a
reader's layout (`clipctl.data.layouts`): `parse_ref` decides which, `locate` finds what to read, and a registered
dataset that is not present is a DataError naming the `clipctl data fetch` that provides it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from clipctl.data import cc3m, coco, imagenet, shapes
from clipctl.data.manifest import read_manifest
from clipctl.data.records import REGISTRY, Benchmark, DatasetSpec, Role, dataset_dir, split_ref
from clipctl.errors import DataError

BUILTIN_FAMILIES = (shapes, coco, imagenet, cc3m)  # imported for the records they register


def get_spec(dataset_id: str) -> DatasetSpec:
    spec = REGISTRY.get(dataset_id)
    if spec is None:
        hint = difflib.get_close_matches(dataset_id, list(REGISTRY), n=1)
        more = f"did you mean {hint[0]}? " if hint else ""
        raise DataError(
            f"{dataset_id}: unknown dataset id; {more}known: {', '.join(sorted(REGISTRY))} (`clipctl data ls`)"
        )
    return spec


@dataclass(frozen=True)
class DataRef:
    """A parsed reference: a registered dataset with the split it names ("" for none), or a path (`spec` None)."""

    text: str
    spec: DatasetSpec | None = None
    split: str = ""

    @property
    def path(self) -> Path:
        return Path(self.text).expanduser()

    def source(self, split: str) -> str:
        """How results name a split of this dataset: "ID" for its default split, else "ID:split"."""
        assert self.spec is not None
        return self.spec.id if split == self.spec.default_split else f"{self.spec.id}:{split}"


def parse_ref(text: str) -> DataRef:
    """ "ID[:split]" of a registered dataset, else the whole text as a path (which may itself hold a ":")."""
    head, split = split_ref(text)
    spec = REGISTRY.get(head)
    return DataRef(text.strip(), spec, split) if spec is not None else DataRef(text.strip())


@dataclass(frozen=True)
class Located:
    """What a reference names on disk: its path, the role its record gives that split (None for a path: its
    layout decides) and the name results give it."""

    path: Path
    role: Role | None
    source: str


def locate(ref: DataRef | str, root: Path, split: str = "") -> Located:
    """The file or folder `ref` names under `root` (`split` overrides the one it names; default: the record's)."""
    ref = parse_ref(ref) if isinstance(ref, str) else ref
    if ref.spec is None:
        if ref.path.exists():
            return Located(ref.path, None, ref.text)
        head, _ = split_ref(ref.text)
        hint = difflib.get_close_matches(head, list(REGISTRY), n=1)
        more = f"; did you mean {hint[0]}?" if hint else f"; dataset ids: {', '.join(sorted(REGISTRY))}"
        raise DataError(f"{ref.text}: neither a dataset id nor an existing file or folder{more}")
    spec, root = ref.spec, Path(root)
    split = split or ref.split or spec.default_split
    if split not in spec.splits:
        raise DataError(f"{ref.text}: {spec.id} has no split {split!r}; choose from {', '.join(spec.splits)}")
    manifest = read_manifest(root, spec.id)
    if manifest is None:
        raise DataError(
            f"{ref.text}: dataset {spec.id} is not present under {root}; run `clipctl data fetch {spec.id}`"
        )
    path = dataset_dir(spec, root) / manifest.get("splits", {}).get(split, spec.splits[split].path)
    if not path.exists():
        raise DataError(
            f"{ref.text}: {path} is missing although manifests/{spec.id}.json exists; "
            f"run `clipctl data fetch {spec.id} --force`"
        )
    return Located(path, spec.splits[split].role, ref.source(split))


def resolve(ref: str, root: Path) -> Path:
    """A dataset reference ("ID[:split]" or a path) -> the file or folder to read."""
    return locate(ref, root).path


def records() -> list[DatasetSpec]:
    """Every registered record, by id (registration order depends on which module was imported first)."""
    return sorted(REGISTRY.values(), key=lambda spec: spec.id)


def benchmarks() -> dict[str, tuple[DatasetSpec, Benchmark]]:
    """Every `clipctl eval --FLAG` shorthand the records declare, by flag."""
    return dict(sorted((b.flag, (spec, b)) for spec in REGISTRY.values() for b in spec.benchmarks))


def published_part(source: str) -> str:
    """The part of the published setting the dataset `source` names is ("train", "retrieval", "zeroshot"; "" for a
    path or a dataset that is none of them); case and surrounding spaces are ignored."""
    spec = parse_ref(source.strip().lower()).spec
    return spec.published if spec is not None else ""
