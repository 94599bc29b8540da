"""Text that came out of run folders, made safe to print.

A folder name or a value in summary.json is whatever someone wrote there: an ANSI escape would recolour or
rewrite the terminal, a newline would split a table row or a CSV record, a bidi override would reorder what
the reader sees, and a lone surrogate (a folder name that is not UTF-8) cannot be written to a UTF-8 stdout
at all. Every format compare prints passes its strings through `printable`.
"""

from __future__ import annotations

import unicodedata
from typing import Any

# Control (Cc), format (Cf: bidi overrides, zero-width), surrogate (Cs) and line/paragraph separators.
_ESCAPED = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if unicodedata.category(char) not in _ESCAPED:
        return char
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """`text` with every control, format and separator character written as a Python escape (`\\x1b`, `\\n`)."""
    return text if text.isprintable() else "".join(_escape(char) for char in text)


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
