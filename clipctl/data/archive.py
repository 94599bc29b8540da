"""Safe archive extraction: every member is checked before anything is written, extraction goes to a
temporary folder next to the target, and only a complete extraction is renamed into place.

Refused: absolute paths, `..` components, links whose target leaves the extraction folder, and device
or FIFO members. A refused archive writes nothing at all.
"""
from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Callable, Iterator

from clipctl.errors import DataError


def unsafe_reason(name: str) -> str | None:
    """Why a member path would land outside the target, or None when it stays inside."""
    if not name or "\0" in name:
        return "empty or NUL in name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or posixpath.isabs(name):
        return "absolute path"
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return "'..' in path"
    return None


def _link_escapes(member_name: str, target: str, hard: bool) -> bool:
    """Symlink targets are relative to the member's folder, hard-link targets to the archive root."""
    if posixpath.isabs(target) or target.startswith("\\"):
        return True
    resolved = posixpath.normpath(posixpath.join("" if hard else posixpath.dirname(member_name), target))
    return resolved == ".." or resolved.startswith("../")


def check_members(archive: Path) -> list[str]:
    """Every regular member's name; DataError naming the first unsafe member (nothing is extracted)."""
    names = []
    for name, kind, link in _list(archive):
        reason = unsafe_reason(name)
        if reason is None and kind in ("link", "hardlink") and _link_escapes(name, link, kind == "hardlink"):
            reason = f"link to {link!r} outside the target"
        if reason is None and kind == "special":
            reason = "device or FIFO member"
        if reason:
            raise DataError(f"{archive}: member {name!r} refused ({reason}); the archive is unsafe, nothing was extracted")
        if kind == "file":
            names.append(name)
    return names


def _list(archive: Path) -> Iterator[tuple[str, str, str]]:
    """(name, kind: file|dir|link|special, link target) for each member of a tar or zip archive."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        yield info.filename, "link", zf.read(info).decode("utf-8", "replace")
                    else:
                        yield info.filename, "dir" if info.is_dir() else "file", ""
            return
        with tarfile.open(archive) as tar:
            for info in tar:
                if info.issym() or info.islnk():
                    yield info.name, "link" if info.issym() else "hardlink", info.linkname
                elif info.isdir():
                    yield info.name, "dir", ""
                elif info.isfile():
                    yield info.name, "file", ""
                else:
                    yield info.name, "special", ""
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataError(f"{archive}: not a readable tar or zip archive ({err}); delete it and fetch again") from None


def extract(archive: Path, dest: Path, select: Callable[[str], bool] | None = None) -> list[str]:
    """Extract the members `select` accepts (all by default) into `dest`, atomically; returns their names.

    `dest` must not exist yet (callers move it aside for --force); a failure leaves no `dest` behind.
    """
    names = check_members(archive)
    chosen = [n for n in names if select is None or select(n)]
    tmp = dest.parent / f".{dest.name}.extract-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in chosen:
                    out = tmp / name
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(name) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        else:
            wanted = set(chosen)
            with tarfile.open(archive) as tar:
                members = [m for m in tar if m.isdir() or m.name in wanted or ((m.issym() or m.islnk()) and select is None)]
                tar.extractall(tmp, members=members, filter="data")
        os.replace(tmp, dest)
    except tarfile.FilterError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{archive}: {err}; the archive is unsafe, nothing was extracted") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return chosen


def iter_tar_files(archive: Path) -> Iterator[tuple[str, bytes]]:
    """Stream (name, bytes) of the regular members of a (possibly compressed) tar, checking each name.

    Why: ImageNet's 6.7 GB val tar is re-sorted into class folders in one pass, without a full copy.
    """
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for info in tar:
                reason = unsafe_reason(info.name)
                if reason:
                    raise DataError(f"{archive}: member {info.name!r} refused ({reason}); the archive is unsafe")
                if info.isfile():
                    handle = tar.extractfile(info)
                    if handle is not None:
                        yield info.name, handle.read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{archive}: not a readable tar archive ({err}); delete it and fetch again") from None
