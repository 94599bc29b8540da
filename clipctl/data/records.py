"""A dataset is one record: id, splits, sizes, licence, options model, preparer and how its splits are read.

Each dataset family defines its records in its own module and registers each one there, at its definition,
with `register_dataset` (`clipctl.data.shapes`, `coco`, `imagenet`, `cc3m`); `clipctl.data.registry` imports the
built-in families and answers lookups. A new dataset is one module with one `register_dataset(...)` line: the
`data fetch` options, the `clipctl eval` shorthands and the published-baseline checks all come from the records.

Every real URL lives in a record and only there; `CLIPCTL_MIRROR=<base URL>` replaces each source with
`<base>/<dataset id>/<file name>` (tests point it at a local server; sites can host their own copy).

`split_ref` is the one place a dataset reference "ID[:split]" is cut in two (`registry.parse_ref` then decides
whether the head is a registered id or the whole text a path).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from clipctl.errors import UsageError
from clipctl.schema import format_validation_error

MIRROR_ENV = "CLIPCTL_MIRROR"
Role = Literal["pairs", "retrieval", "classification"]
EVAL_ROLES: tuple[Role, ...] = ("retrieval", "classification")


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file; `size`/`md5`/`sha256` are checked when known (else recorded at first fetch)."""

    name: str  # file name under <root>/downloads/ and on a mirror
    url: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Split:
    """One split: where it lies under the dataset folder (a manifest's "splits" may move it) and what it is,
    which decides the readers that may open it (`clipctl.data.layouts`)."""

    path: str
    role: Role


@dataclass(frozen=True)
class Benchmark:
    """What `clipctl eval --FLAG` (and `--dataset ID`) evaluates: one retrieval and/or one classification split.

    `flag` also names the result row and `eval/<flag>.json`; `note` is a line under the table; `reported=False`
    marks a set kept for comparison only, which never enters the `combined` objective."""

    flag: str
    splits: tuple[str, ...]
    help: str
    note: str = ""
    reported: bool = True


class DatasetOptions(BaseModel):
    """Base of a dataset's options model: what `data fetch ID --NAME VALUE` accepts and what the dataset on disk
    was made with (its identity). Lax types, so command-line strings validate; unknown names are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(DatasetOptions):
    """A dataset that is made one way only."""


class Preparer(ABC):
    """How a dataset gets onto disk. `prepare` makes it under `<root>/<folder>` (a whole-folder preparer stages it
    with `clipctl.data.staging.staged`, so a failure leaves the old copy or nothing) and returns its manifest,
    which the caller writes last; `verify` re-checks a present copy against its manifest (DataError on any
    difference); `made_with` reads the options a present copy was made with from its manifest (None: unknown,
    e.g. made by another generator version). Only the options it returns are compared with the ones asked for."""

    @abstractmethod
    def prepare(self, spec: DatasetSpec, root: Path, options: Any, *, force: bool) -> dict[str, Any]: ...

    @abstractmethod
    def verify(self, spec: DatasetSpec, root: Path, manifest: dict[str, Any]) -> None: ...

    def made_with(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        options = manifest.get("options", {})
        return options if isinstance(options, dict) else None


@dataclass(frozen=True)
class DatasetSpec:
    """The record of one dataset (see the module docstring)."""

    id: str
    role: str  # shown by `data ls`: train, eval, all, ...
    description: str
    licence: str  # printed at every fetch
    folder: str  # under the data root
    splits: dict[str, Split]
    default_split: str  # what a reference without ":split" names
    preparer: Preparer
    options: type[DatasetOptions] = NoOptions
    recipe_keys: dict[str, str] = field(default_factory=dict)  # option -> the `data.*` recipe key a run sets it by
    made_on_use: bool = False  # a run that needs it makes it (nothing to download); else it is fetched explicitly
    stamped: bool = True  # the manifest records fetch/verify times (False: it stays byte-identical)
    benchmarks: tuple[Benchmark, ...] = ()
    published: str = ""  # the part of the published setting it is ("train", "retrieval", "zeroshot"), if any
    expect: dict[str, int] = field(default_factory=dict)  # counts checked after preparation
    files: tuple[RemoteFile, ...] = ()
    image_url: str = ""  # per-image fallback source: "{image}" is the annotation's relative path
    hub_repo: str = ""  # Hugging Face dataset repo of the hub source
    hub_revision: str = ""
    access_hint: str = ""  # what to provide when the source is gated or unreachable (one clause)
    local_copy: str = ""  # the environment variables and layouts that stand in for the hub (offline message)

    def file(self, name: str) -> RemoteFile:
        return next(f for f in self.files if f.name == name)

    def parse_options(self, values: Mapping[str, Any], source: str) -> DatasetOptions:
        """`values` as this dataset's options model; a bad name or value is a one-line UsageError."""
        try:
            return self.options.model_validate(dict(values))
        except ValidationError as err:
            raise UsageError(format_validation_error(source, err, list(self.options.model_fields))) from None


REGISTRY: dict[str, DatasetSpec] = {}  # id -> record, in registration order


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Make a dataset known to every command; call it where the record is defined."""
    if spec.default_split not in spec.splits:
        raise ValueError(f"{spec.id}: default_split {spec.default_split!r} is not one of its splits")
    for benchmark in spec.benchmarks:
        unknown = [s for s in benchmark.splits if s not in spec.splits]
        if unknown:
            raise ValueError(f"{spec.id}: benchmark {benchmark.flag!r} names unknown splits {unknown}")
    REGISTRY[spec.id] = spec
    return spec


def split_ref(text: str) -> tuple[str, str]:
    """("head", "split") of "head[:split]" ("split" is "" when none is named). The only place a reference is cut."""
    head, _, split = text.strip().partition(":")
    return head, split


def source_url(spec: DatasetSpec, url: str, name: str) -> str:
    """The URL to fetch: the record's, or `$CLIPCTL_MIRROR/<id>/<name>` when a mirror is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    return f"{mirror.rstrip('/')}/{spec.id}/{name}" if mirror else url


def dataset_dir(spec: DatasetSpec, root: Path) -> Path:
    return Path(root) / spec.folder
