"""The gate for files clipctl reads from a folder the user names (`$CLIPCTL_IMAGENET_DIR`, a CC3M JSON's image
folder, files placed in `<data root>/downloads/`): regular files only, never through a link that leaves the folder.

Why: a FIFO or device passed on blocks the reader (eval hangs with no output) and a link out of the folder would
let any file the user can read, named `.JPEG`, be hard-linked or copied into the data root. A link that stays
inside the folder is followed: it names a file the user already gave us.
"""

from __future__ import annotations

import stat
from pathlib import Path

from clipctl.errors import DataError

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def file_kind(path: Path) -> str:
    """What `path` is, in words ("a FIFO (named pipe)", ...), for a one-line error."""
    return _kind(path.stat().st_mode)


def regular_file_inside(path: Path, folder: Path) -> Path:
    """`path` with its links resolved, when that is a regular file inside `folder`; else a one-line DataError
    (exit 3) naming `path`, what it is, and the way out."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError) as err:  # RuntimeError: a link loop (Python < 3.13)
        reason = "a broken link" if path.is_symlink() else f"unreadable ({getattr(err, 'strerror', None) or err})"
        raise DataError(f"{path}: {reason}; remove it or replace it with the file itself") from None
    inside = folder.resolve()
    if not real.is_relative_to(inside):
        raise DataError(
            f"{path}: a link to {real}, outside {inside}; clipctl never follows a link out of the folder it reads: "
            f"copy the file in, or name the folder that holds it"
        )
    mode = real.stat().st_mode
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: {_kind(mode)}, not a regular file; remove it or replace it with the file itself")
    return real
