"""One error type for the whole project: a message for humans plus the exit code of specs/cli.md."""

from __future__ import annotations

import errno

from clipctl.console import printable

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_RUN_CONFLICT = 4
EXIT_RESUME = 5
EXIT_INTERRUPTED = 130

MAX_VALUE = 200  # one word (a value, a path) longer than this is cut in the middle in messages
MAX_MESSAGE = 1000  # and a whole message longer than this
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    return f"{text[:head]} … {text[len(text) - (limit - head - 3) :]}"


def shorten(text: str) -> str:
    """Cut huge echoed values (and, as a backstop, the whole message) in the middle, so a 7 MB value
    cannot flood the terminal while the message's hint at the end stays; control characters in an echoed
    value (a file name with an ANSI escape or a newline) are written as escapes, so the error stays one line."""
    words = [_cut(word, MAX_VALUE) for word in printable(text).split(" ")]
    return _cut(" ".join(words), MAX_MESSAGE)


def _worker_message(message: str) -> str:
    """A DataLoader worker's error arrives as its whole traceback; keep the original error's own message."""
    if _WORKER_TRACEBACK not in message:
        return message
    last = [line for line in message.splitlines() if line.strip()][-1]
    _, _, own = last.partition(": ")
    return f"in a data loader worker: {own or last}"


# errno -> (what happened, what to do about it); the first four are the storage faults a user can clear
_OS_REASONS = {
    errno.ENOSPC: ("disk full (no space left on device)", "free space or choose another --out"),
    errno.EDQUOT: ("disk quota exceeded", "free space or choose another --out"),
    errno.EFBIG: (
        "file too large (over the file-size limit, `ulimit -f`, or the file system's maximum)",
        "raise the limit or choose another --out",
    ),
    errno.EROFS: ("read-only file system", "choose a writable --out"),
    errno.EACCES: ("permission denied", "choose a writable folder or fix its permissions"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter --name or --out"),
}
# How to clear a storage fault in place, so the same command can go on afterwards
_CLEARED_IN_PLACE = {
    errno.ENOSPC: "free space",
    errno.EDQUOT: "free space",
    errno.EFBIG: "raise the file-size limit (`ulimit -f unlimited`)",
    errno.EROFS: "make the file system writable",
}


def os_error_message(err: OSError, then: str = "") -> str:
    """One line for a failed file operation, naming full disks, size limits and read-only folders as such.

    `then` is what to run once a storage fault is cleared in place (a run continues where it stopped);
    without it the line suggests another --out.
    """
    where = err.filename or "file"
    if then and err.errno in _CLEARED_IN_PLACE:
        return f"{where}: {_OS_REASONS[err.errno][0]}; {_CLEARED_IN_PLACE[err.errno]}, then {then}"
    reason, fix = _OS_REASONS.get(err.errno, (err.strerror or str(err), ""))
    return f"{where}: {reason}; {fix}" if fix else f"{where}: {reason}"


class ClipctlError(Exception):
    """A failure the user can act on; the CLI prints `str(err)` as one line and exits with `exit_code`."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        message = _worker_message(message)
        super().__init__(shorten(" ".join(message.split()) if "\n" in message else message))
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(ClipctlError):
    """Invalid arguments or recipe (exit 2)."""

    exit_code = EXIT_USAGE


class DataError(ClipctlError):
    """Dataset missing, unreachable or failing verification (exit 3)."""

    exit_code = EXIT_DATA


class RunConflictError(ClipctlError):
    """The run directory exists and no --resume was given (exit 4)."""

    exit_code = EXIT_RUN_CONFLICT


class ResumeError(ClipctlError):
    """Resume impossible: state missing or incompatible (exit 5)."""

    exit_code = EXIT_RESUME


class StorageError(ClipctlError):
    """Writing failed: disk full, read-only or forbidden output (exit 1)."""

    @classmethod
    def from_os_error(cls, err: OSError, then: str = "") -> StorageError:
        return cls(os_error_message(err, then))


class InterruptedRun(ClipctlError):
    """Training stopped by SIGINT/SIGTERM after writing a resumable state (exit 130)."""

    exit_code = EXIT_INTERRUPTED
