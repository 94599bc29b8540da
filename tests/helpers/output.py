"""Reading what a command printed."""

from __future__ import annotations

from pathlib import Path


def without_warnings(err: str) -> str:
    """stderr less its `warning:` lines (advice printed before a run, e.g. the ρ ≥ log(B−1) warning), so a test
    can check that the error itself is one line."""
    return "".join(line for line in err.splitlines(keepends=True) if not line.startswith("warning: "))


def assert_one_error_line(err: str) -> None:
    """The CLI's error contract: one `clipctl: error:` line (warnings aside), never a traceback."""
    err = without_warnings(err)
    assert err.count("\n") == 1 and err.startswith("clipctl: error: ") and "Traceback" not in err, err


def assert_ends_in_one_error_line(err: str) -> None:
    """A command that worked a while (progress lines) before it failed: one error line, the last, no traceback."""
    lines = without_warnings(err).strip().splitlines()
    assert lines[-1].startswith("clipctl: error: ") and "Traceback" not in err, err
    assert sum(line.startswith("clipctl: error: ") for line in lines) == 1, err


def file_snapshot(root: Path) -> dict[str, bytes]:
    """Every file below `root` with its bytes: equal before and after means nothing on disk changed."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
