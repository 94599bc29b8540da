"""One error type for the whole project: a message for humans plus the exit code of specs/cli.md."""
from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_RUN_CONFLICT = 4
EXIT_RESUME = 5
EXIT_INTERRUPTED = 130


class ClipctlError(Exception):
    """A failure the user can act on; the CLI prints `str(err)` as one line and exits with `exit_code`."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(" ".join(message.split()) if "\n" in message else message)
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


class InterruptedRun(ClipctlError):
    """Training stopped by SIGINT/SIGTERM after writing a resumable state (exit 130)."""

    exit_code = EXIT_INTERRUPTED
