"""The study's files: the `clipctl compare --json` output it reads, and the tables it writes (JSON for scripts,
markdown for people, both atomic so an interrupted write never leaves half a table beside the results)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clipctl.atomic import atomic_write_json, atomic_write_text
from clipctl.errors import UsageError
from clipctl.report.text import printable

MAKE_COMPARE_JSON = "write it with clipctl compare RUNS --json > compare.json"


def read_groups(compare_json: Path) -> list[dict[str, Any]]:
    """The groups of a comparison's JSON; a missing, unreadable or foreign file is refused in one line."""
    where = printable(str(compare_json))
    if not compare_json.is_file():
        raise UsageError(f"{where}: no such file; {MAKE_COMPARE_JSON}")
    try:
        payload = json.loads(compare_json.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{where}: not JSON ({err}); {MAKE_COMPARE_JSON}") from None
    groups = payload.get("groups") if isinstance(payload, dict) else None
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("label"), str) for g in groups):
        raise UsageError(f"{where}: no list of groups in it, so not a comparison; {MAKE_COMPARE_JSON}")
    return groups


def cell(text: str) -> str:
    """A name in a markdown table cell: printable, and a `|` cannot end the cell."""
    return printable(text).replace("|", "\\|")


def write_table(folder: Path, stem: str, payload: dict[str, Any], markdown: str) -> Path:
    """`<stem>.json` and `<stem>.md` in `folder` (made if missing); returns the markdown's path."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / f"{stem}.json", payload, indent=2)
    atomic_write_text(folder / f"{stem}.md", markdown)
    return folder / f"{stem}.md"
