"""Training pairs as a JSON list of `{"image", "caption", "image_id"}` (specs/data.md, format 1).

Two layouts: a pairs JSON whose image paths start from the JSON's own folder, and the course's
`cc3m_train_subset.json`, whose image paths start from a separate image root (`data.image_root`, e.g. the
course's `datasets/cc3m_subset_100k/`).
"""

from __future__ import annotations

from pathlib import Path

from clipctl.data.images import read_json
from clipctl.data.layouts import PairsSource, Reader, register_reader
from clipctl.errors import DataError


def _entries(path: Path) -> tuple[list[str], list[str]]:
    """The image paths as written and the captions, every entry checked."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f'{path}: expected a JSON list of {{"image", "caption", "image_id"}} objects')
    images, captions = [], []
    for i, entry in enumerate(data):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("image"), str)
            or not isinstance(entry.get("caption"), str)
        ):
            raise DataError(
                f'{path}: entry {i}: expected {{"image": str, "caption": str, "image_id": int|str}}, got '
                f"{str(entry)[:80]}"
            )
        images.append(entry["image"])
        captions.append(entry["caption"])
    return images, captions


def is_json(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".json"


def _as_path(item: Path) -> Path:
    return item


def read_pairs_json(path: Path, image_root: Path | None = None) -> PairsSource:
    """The pairs of `path`, their images under `image_root` (default: the JSON's folder)."""
    root = image_root or path.parent
    keys, captions = _entries(path)
    items = [root / key for key in keys]
    return PairsSource(items, [str(p) for p in items], keys, captions, _as_path, check_headers=True)


register_reader(
    Reader(
        "pairs-json",
        "pairs",
        'a pairs JSON ([{"image", "caption"}], images beside it)',
        lambda path, image_root_given: is_json(path) and not image_root_given,
        read_pairs_json,
    )
)
register_reader(
    Reader(
        "course-json",
        "pairs",
        "the course's pairs JSON with its image folder in data.image_root",
        lambda path, image_root_given: is_json(path) and image_root_given,
        read_pairs_json,
    )
)
