"""Safe archive extraction: every member is checked before anything is written, extraction goes to a
temporary folder next to the target, and only a complete extraction is renamed into place.

Refused: absolute paths, `..` components, device or FIFO members, a member whose path goes through a
link of the archive, a link to another link (the PATH_MAX chains of CVE-2025-4517 need both), a link
whose target leaves the extraction folder, and a hard link to anything but a regular file of the
archive. Links are resolved component by component against the archive's own links, so the check is
what the filesystem will do, not a string comparison. Extraction is clipctl's own (no
`tarfile.extractall`, whose `filter="data"` is missing or bypassable on some supported Pythons):
regular files first, written without following links; hard links are copied; symlinks are made last.
A refused archive writes nothing at all.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from clipctl.data.staging import stage_path, staged
from clipctl.errors import DataError

_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError)


@dataclass(frozen=True)
class Member:
    """One archive member: its normalised path, kind (file|dir|symlink|hardlink|special), link target."""

    name: str
    kind: str
    link: str = ""
    raw: str = ""  # the name as stored in the archive (to read it back)


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


def _normal(name: str) -> str:
    return posixpath.normpath(name.replace("\\", "/"))


def _prefixes(path: str) -> Iterator[str]:
    """'a/b/c' -> 'a', 'a/b' (the folders a member's path goes through)."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def _resolve_link(start: str, target: str, links: set[str]) -> tuple[str | None, str]:
    """Walk `target` from folder `start` one component at a time: (resolved path, "") or (None, why refused).

    Any component that is itself a link of the archive is refused, so the lexical walk equals the real one.
    """
    if not target or posixpath.isabs(target) or target.startswith("\\") or (len(target) > 1 and target[1] == ":"):
        return None, f"link to {target!r} outside the target"
    stack = [p for p in start.split("/") if p not in ("", ".")]
    for part in target.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return None, f"link to {target!r} outside the target"
            stack.pop()
            continue
        stack.append(part)
        if "/".join(stack) in links:
            return None, f"link to {target!r} reaches the link {'/'.join(stack)!r}; links to links are refused"
    return "/".join(stack) or ".", ""


def _member_problem(member: Member, links: set[str], files: set[str], counts: Counter) -> str | None:
    reason = unsafe_reason(member.raw or member.name)
    if reason:
        return reason
    if member.kind == "special":
        return "device or FIFO member"
    through = next((p for p in _prefixes(member.name) if p in links), None)
    if through:
        return f"its path goes through the link {through!r}"
    if member.kind in ("symlink", "hardlink") and counts[member.name] > 1:
        return "a link that appears more than once"
    if member.kind == "symlink":
        _, why = _resolve_link(posixpath.dirname(member.name), member.link, links)
        return why or None
    if member.kind == "hardlink":
        resolved, why = _resolve_link("", member.link, links)
        if why:
            return why.replace("link to", "hard link to")
        if resolved not in files:
            return f"hard link to {member.link!r}, which is not a regular file of the archive"
    return None


def check_members(archive: Path) -> list[Member]:
    """Every member, checked; DataError naming the first unsafe member (nothing is extracted)."""
    members = [m for m in _list(archive) if m.name != "."]
    links = {m.name for m in members if m.kind in ("symlink", "hardlink")}
    files = {m.name for m in members if m.kind == "file"}
    counts = Counter(m.name for m in members)
    for member in members:
        reason = _member_problem(member, links, files, counts)
        if reason:
            raise DataError(
                f"{archive}: member {member.raw or member.name!r} refused ({reason}); "
                f"the archive is unsafe, nothing was extracted"
            )
    return members


def _list(archive: Path) -> Iterator[Member]:
    """The members of a tar or zip archive, in archive order."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        link = zf.read(info).decode("utf-8", "replace")
                        yield Member(_normal(info.filename), "symlink", link, info.filename)
                    else:
                        yield Member(_normal(info.filename), "dir" if info.is_dir() else "file", "", info.filename)
            return
        with tarfile.open(archive) as tar:
            for info in tar:
                kind = (
                    "symlink"
                    if info.issym()
                    else "hardlink"
                    if info.islnk()
                    else "dir"
                    if info.isdir()
                    else "file"
                    if info.isfile()
                    else "special"
                )
                yield Member(_normal(info.name), kind, info.linkname, info.name)
    except _READ_ERRORS as err:
        raise DataError(f"{archive}: not a readable tar or zip archive ({err}); delete it and fetch again") from None


def _path_in(base: Path, name: str) -> Path:
    return base.joinpath(*name.split("/"))


def _check_inside(base: Path, path: Path, archive: Path, name: str) -> None:
    """Belt and braces: the real location of what is about to be written (or was linked) is under `base`."""
    real, root = os.path.realpath(path), os.path.realpath(base)
    if os.path.commonpath([real, root]) != root:
        raise DataError(
            f"{archive}: member {name!r} refused (it resolves to {real}, outside the target); "
            f"the archive is unsafe, nothing was extracted"
        )


def _write_file(base: Path, member: Member, source: IO[bytes], archive: Path) -> None:
    out = _path_in(base, member.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_inside(base, out.parent, archive, member.name)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o666)
    with os.fdopen(fd, "wb") as handle:
        shutil.copyfileobj(source, handle, 1 << 20)


def _extract_members(archive: Path, base: Path, members: list[Member]) -> None:
    """Directories and regular files in archive order, then hard links (copied), then symlinks."""
    for member in members:
        if member.kind == "dir":
            _path_in(base, member.name).mkdir(parents=True, exist_ok=True)
    regular = [m for m in members if m.kind == "file"]
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in regular:
                with zf.open(member.raw) as source:
                    _write_file(base, member, source, archive)
    else:
        wanted = {m.raw: m for m in regular}
        with tarfile.open(archive) as tar:
            for info in tar:
                member = wanted.get(info.name)
                source = tar.extractfile(info) if member is not None else None
                if member is not None and source is not None:
                    _write_file(base, member, source, archive)
    for member in members:
        if member.kind == "hardlink":
            with open(_path_in(base, _normal(member.link)), "rb") as source:
                _write_file(base, member, source, archive)
    for member in members:
        if member.kind == "symlink":
            out = _path_in(base, member.name)
            out.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(member.link, out)
            _check_inside(base, out, archive, member.name)


def extract(archive: Path, dest: Path, select: Callable[[str], bool] | None = None) -> list[str]:
    """Extract the regular files `select` accepts (all members by default) into `dest`, atomically; returns
    their normalised names. Links are extracted only when nothing is selected out.

    It is extracted through `clipctl.data.staging.staged`: a failure leaves `dest` as it was (or absent).
    """
    members = check_members(archive)
    if select is not None:
        members = [m for m in members if m.kind == "dir" or (m.kind == "file" and select(m.name))]
    tmp = stage_path(dest)
    try:
        with staged(dest):
            _extract_members(archive, tmp, members)
    except _READ_ERRORS as err:
        if isinstance(err, OSError) and str(getattr(err, "filename", "") or "").startswith(str(tmp)):
            raise DataError(
                f"{dest}: cannot write the extracted files ({err.strerror or err}); free some space "
                f"or choose another data root (CLIPCTL_DATA)"
            ) from None
        raise DataError(f"{archive}: not a readable tar or zip archive ({err}); delete it and fetch again") from None
    return [m.name for m in members if m.kind == "file"]


def iter_tar_files(archive: Path) -> Iterator[tuple[str, bytes]]:
    """Stream (name, bytes) of the regular members of a (possibly compressed) tar, checking each name.

    Nothing is written to disk, so links need no resolution. Why: ImageNet's 6.7 GB val tar is re-sorted
    into class folders in one pass, without a full copy.
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
