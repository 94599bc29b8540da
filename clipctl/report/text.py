"""Text that came out of run folders, made safe to print.

A folder name or a value in summary.json is whatever someone wrote there: an ANSI escape would recolour or
rewrite the terminal, a newline would split a table row or a CSV record, a bidi override would reorder what
the reader sees, and a lone surrogate (a folder name that is not UTF-8) cannot be written to a UTF-8 stdout
at all. Every format compare prints passes its strings through `printable`.
"""

from __future__ import annotations

from typing import Any

from clipctl.console import printable


def printable_tree(value: Any) -> Any:
    """A JSON-ready value with `printable` applied to every string, keys included (for --json)."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable_tree(k): printable_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable_tree(v) for v in value]
    return value


def plot_text(text: str) -> str:
    """A matplotlib label: printable, with `$` escaped so a folder name never starts math mode (a parse error)."""
    return printable(text).replace("$", r"\$")
