"""A study's recipe names read as its factors: `[<source>towers_]<loss and its settings>_b<global batch>`
(`cliptowers_clip_b8`, `sogclr_g08_b16`, `isogclr_new_v2_b32`). Pairing and the by-batch plot both read them."""

from __future__ import annotations

import re
from typing import Any

FACTORS = ("towers", "loss", "batch")


def natural_key(name: str) -> list[Any]:
    """Sort key that orders the numbers in a name as numbers (b8 before b32)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def recipe_of(label: str) -> str:
    """A study group's recipe: its label without the grid value (`cliptowers_clip_b8-lr-0.002`: the lr was
    chosen per cell, so it is not a factor of the comparison)."""
    return label.split("-")[0]


def factors(label: str) -> dict[str, str]:
    """A study recipe's factors: the tower source (a first part ending in `towers`), the global batch (a last
    part `b<N>`) and the loss with its settings (the parts between); a factor a name lacks is ""."""
    parts = recipe_of(label).split("_")
    batch = parts.pop() if len(parts) > 1 and re.fullmatch(r"b\d+", parts[-1]) else ""
    towers = parts.pop(0) if len(parts) > 1 and parts[0].endswith("towers") else ""
    return {"towers": towers, "loss": "_".join(parts), "batch": batch}


def differing_factor(first: str, second: str) -> str | None:
    """The one factor in which two recipes differ, else None."""
    a, b = factors(first), factors(second)
    differ = [name for name in FACTORS if a[name] != b[name]]
    return differ[0] if len(differ) == 1 else None


def family(label: str) -> str:
    """The recipe family a cell belongs to across batches: its towers and its loss (`cliptowers_clip`)."""
    cell = factors(label)
    return "_".join(part for part in (cell["towers"], cell["loss"]) if part)
