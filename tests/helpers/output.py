"""Reading what a command printed."""

from __future__ import annotations


def without_warnings(err: str) -> str:
    """stderr less its `warning:` lines (advice printed before a run, e.g. the ρ ≥ log(B−1) warning), so a test
    can check that the error itself is one line."""
    return "".join(line for line in err.splitlines(keepends=True) if not line.startswith("warning: "))
