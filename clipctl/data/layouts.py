"""Readers by layout: how a file or folder of one on-disk layout becomes samples.

A reader is registered once, at its definition, with `register_reader`: its layout name, the role of what it
reads (training pairs, a retrieval set, a classification set), which paths it takes, and its `read`. The built-in
layouts are a pairs JSON (`pairs_json`), the course's pairs JSON with its separate image root (`pairs_json`), a
folder of WebDataset shards (`webdataset`), a retrieval JSON (`retrieval_json`) and a class folder
(`class_folder`); `clipctl.data.datasets` imports them and picks the reader of a path (`reader_for`). A new layout
is one module with one `register_reader(...)` line.

A pairs reader returns a `PairsSource` (every sample's image, name, key and raw caption) that `PairsDataset` turns
into the indexed training set; a retrieval or classification reader returns the evaluation dataset itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipctl.data.records import Role


@dataclass(frozen=True)
class PairsSource:
    """The samples of a training layout, in source order, before subsetting and caption cleaning.

    `items[i]` is what `load` turns into the image (a file path, or bytes read from a shard); `names[i]` names it in
    messages; `keys[i]` identifies it independently of the data root (the image path as written, the shard member);
    `check_headers`: open every image header at construction (files; shard members are checked when decoded)."""

    items: list[Any]
    names: list[str]
    keys: list[str]
    captions: list[str]
    load: Callable[[Any], Path | bytes]
    check_headers: bool


@dataclass(frozen=True)
class Reader:
    """One layout. `accepts(path, image_root_given)` says whether this layout reads `path` (cheap: no parsing);
    `read(path, ...)`: pairs readers take `(path, image_root)` and return a `PairsSource`, evaluation readers take
    `(path, transform, on_bad_image=...)` and return the dataset."""

    layout: str
    role: Role
    describe: str  # for errors: what a path of this layout holds
    accepts: Callable[[Path, bool], bool]
    read: Callable[..., Any]


READERS: dict[str, Reader] = {}  # layout -> reader, in registration order (the first that accepts a path wins)


def register_reader(reader: Reader) -> Reader:
    """Make a layout readable wherever a dataset reference of its role is accepted; call it at its definition."""
    READERS[reader.layout] = reader
    return reader


def is_folder(path: Path, image_root_given: bool = False) -> bool:
    return path.is_dir()
