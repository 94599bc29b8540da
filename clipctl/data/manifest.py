"""Hashes, atomic writes and the per-dataset manifest (`manifests/<id>.json`).

A dataset counts as present only when its manifest exists: the manifest is written last, atomically, so a
killed fetch or generation never leaves something that looks complete.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clipctl.atomic import atomic_write_json
from clipctl.errors import DataError

CHUNK = 1 << 20


def hash_file(path: Path, algorithms: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """Hex digests of one file for each algorithm, reading it once."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def sha256_file(path: Path) -> str:
    return hash_file(path)["sha256"]


def files_digest(base: Path, rels: Iterable[str]) -> tuple[str, int]:
    """One sha256 over the given files (relative path + content hash, sorted by path) and their count.

    Why: a single digest lets `verify` and the determinism tests compare thousands of images at once.
    """
    digest = hashlib.sha256()
    count = 0
    for rel in sorted(set(rels)):
        digest.update(rel.encode() + b"\0" + hashlib.sha256((base / rel).read_bytes()).digest())
        count += 1
    return digest.hexdigest(), count


def tree_digest(folder: Path, pattern: str = "*") -> tuple[str, int]:
    """`files_digest` over every file under `folder` matching `pattern`."""
    return files_digest(folder, (p.relative_to(folder).as_posix() for p in folder.rglob(pattern) if p.is_file()))


def manifest_path(root: Path, dataset_id: str) -> Path:
    return root / "manifests" / f"{dataset_id}.json"


def read_manifest(root: Path, dataset_id: str) -> dict[str, Any] | None:
    """The manifest, or None when the dataset was never completed; a corrupt manifest is a DataError."""
    path = manifest_path(root, dataset_id)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable manifest ({err}); run `clipctl data fetch {dataset_id} --force`") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: manifest is not a JSON object; run `clipctl data fetch {dataset_id} --force`")
    files = data.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        got = "missing" if files is None else f"a {type(files).__name__}, not an object of path -> sha256"
        raise DataError(
            f'{path}: key "files" is {got}; the manifest is incomplete or not clipctl\'s; '
            f"run `clipctl data fetch {dataset_id} --force`"
        )
    return data


def write_manifest(root: Path, dataset_id: str, payload: dict[str, Any]) -> Path:
    path = manifest_path(root, dataset_id)
    atomic_write_json(path, payload)
    return path


def check_hashes(base: Path, expected: dict[str, str], dataset_id: str) -> None:
    """Compare `{relative path: sha256}` against the files under `base`; the first difference is a DataError."""
    for rel, want in sorted(expected.items()):
        path = base / rel
        if not path.is_file():
            raise DataError(
                f"{path}: missing (listed in manifests/{dataset_id}.json); run `clipctl data fetch "
                f"{dataset_id} --force`"
            )
        got = sha256_file(path)
        if got != want:
            raise DataError(
                f"{path}: sha256 mismatch: expected {want}, actual {got}; run `clipctl data fetch {dataset_id} --force`"
            )
