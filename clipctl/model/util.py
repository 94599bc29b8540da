"""Helpers shared by the towers."""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """First sentence of an exception message (at most 160 characters), for embedding in a one-line error."""
    lines = str(err).strip().splitlines()
    sentence = lines[0].split(". ")[0].rstrip(".") if lines else type(err).__name__
    return sentence if len(sentence) <= 160 else sentence[:157] + "..."
