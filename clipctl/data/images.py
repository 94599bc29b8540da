"""What every reader shares: reading a JSON annotation file, and the bad-image policy.

Each reader opens every image header once at construction. With `on_bad_image="skip"` the unreadable ones are
dropped before the dense index is assigned (counted, one warning); with "error" the first one stops everything
with its file name. An image that only fails later, at full decode (e.g. a truncated JPEG), is replaced by a
blank image in "skip" mode (counted, warned once per file) so batch shapes, and the index contract the
per-sample loss buffers rely on, stay intact.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

from clipctl.console import warn
from clipctl.errors import DataError, UsageError

OnBadImage = Literal["skip", "error"]
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def check_mode(on_bad_image: str) -> None:
    if on_bad_image not in ("skip", "error"):
        raise UsageError(f'data.on_bad_image = {on_bad_image!r}: expected "skip" or "error"')


def _open_header(source: Path | bytes) -> None:
    """Parse the image header only (cheap); raises on missing, empty or non-image files."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        if img.width < 1 or img.height < 1:
            raise ValueError("zero-sized image")


def _decode(source: Path | bytes) -> Image.Image:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        return img.convert("RGB")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None


def _report_skipped(what: str, skipped: list[tuple[str, str]], total: int) -> None:
    if skipped:
        name, reason = skipped[0]
        warn(
            f"{what}: skipped {len(skipped)} of {total} unreadable images (first: {name}: {reason}); "
            f'set data.on_bad_image = "error" to stop instead'
        )


class ImageReader:
    """Decodes images for one dataset and applies the bad-image policy at decode time."""

    def __init__(self, on_bad_image: OnBadImage) -> None:
        check_mode(on_bad_image)
        self.on_bad_image = on_bad_image
        self.decode_failures = 0
        self._warned: set[str] = set()

    def load(self, source: Path | bytes, name: str) -> Image.Image:
        try:
            return _decode(source)
        except _READ_ERRORS as err:
            if self.on_bad_image == "error":
                raise DataError(
                    f'{name}: unreadable image ({err}); fix or remove it, or set data.on_bad_image = "skip"'
                ) from None
            self.decode_failures += 1
            if name not in self._warned:
                self._warned.add(name)
                warn(f"{name}: unreadable image ({err}); using a blank image in its place")
            return Image.new("RGB", (32, 32))


def filter_images(
    what: str, names: Sequence[str], sources: Sequence[Path | bytes], on_bad_image: OnBadImage
) -> tuple[list[int], list[tuple[str, str]]]:
    """Positions whose image header opens, and (name, reason) of the others: skipped (warned) or raise (error mode)."""
    keep, skipped = [], []
    for i, (name, source) in enumerate(zip(names, sources)):
        try:
            _open_header(source)
            keep.append(i)
        except _READ_ERRORS as err:
            reason = "missing file" if isinstance(err, FileNotFoundError) else str(err) or type(err).__name__
            if on_bad_image == "error":
                raise DataError(
                    f'{name}: unreadable image ({reason}); fix or remove it, or set data.on_bad_image = "skip"'
                ) from None
            skipped.append((name, reason))
    _report_skipped(what, skipped, len(names))
    return keep, skipped
