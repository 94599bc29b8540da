"""Atomic file writes for the whole project: temp file beside the target, fsync, rename.

A reader (or a process killed mid-write) sees either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _umask_mode() -> int:
    """The mode a plain open() would give a new file (mkstemp's 0600 would hide results from colleagues)."""
    return 0o666 & ~_umask()


def atomic_write(path: Path, writer: Callable[[IO[bytes]], Any]) -> None:
    """Write through `writer(handle)` into a temp file in `path`'s folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _umask_mode())
        with os.fdopen(fd, "wb") as handle:
            writer(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.filename is None:  # a failed write or fsync names no file; callers report which one
            err.filename = str(path)
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_link(source: Path, target: Path) -> None:
    """Make `target` another name of the finished file `source`, replacing it atomically: a second name costs no
    second write (a copy where the file system has no hard links)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(tmp: Path, target: Path) -> None:
    """Swap a fully written folder `tmp` in as `target`; the old `target` is removed only afterwards."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A fresh hidden folder beside `target` to fill; when the block ends normally its files are fsynced and it is
    renamed to `target`, otherwise it is removed. So `target` appears complete or not at all; a process killed
    mid-way leaves only a hidden `.NAME.*.tmp` folder that nothing takes for a result.

    `target` must not exist: the caller refuses an existing one first (a rename onto a folder with files fails).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(stage, 0o777 & ~_umask())  # the mode of a plain mkdir, not mkdtemp's 0700
        yield stage
        for path in sorted(stage.rglob("*")):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        os.rename(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, payload: Any, indent: int = 1) -> None:
    atomic_write_text(path, json.dumps(payload, indent=indent, sort_keys=True, ensure_ascii=False) + "\n")
