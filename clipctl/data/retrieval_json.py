"""A retrieval set (COCO-like, specs/data.md format 2): a JSON list of `{"image": path, "caption": [str, ...]}`,
several captions per image, image paths relative to the JSON's folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from clipctl.data.images import ImageReader, OnBadImage, check_mode, filter_images, read_json
from clipctl.data.layouts import Reader, register_reader
from clipctl.data.text import clean_caption
from clipctl.errors import DataError


class RetrievalDataset(Dataset):
    """COCO-like retrieval set: item -> image tensor; `.captions`, `.text_to_image` (caption -> image index).

    Captions are cleaned (`clean_text`: the model's caption cleaning); empty ones are dropped, and so is an image
    left without captions or whose header does not open (skip mode). `.listed` counts the images with captions,
    `.unreadable` names (path, reason) of those dropped, so evaluation can say what it scored out of what.
    """

    def __init__(
        self,
        source: str | Path,
        transform: Callable,
        *,
        on_bad_image: OnBadImage = "skip",
        image_root: str | Path | None = None,
        clean_text: Callable[[str], str] = clean_caption,
    ) -> None:
        check_mode(on_bad_image)
        self.source = Path(source)
        self.transform = transform
        self._reader = ImageReader(on_bad_image)
        base = Path(image_root) if image_root else self.source.parent
        data = read_json(self.source)
        if not isinstance(data, list):
            raise DataError(f'{self.source}: expected a JSON list of {{"image": path, "caption": [str, ...]}} objects')
        entries: list[tuple[Path, list[str]]] = []
        for i, entry in enumerate(data):
            captions = entry.get("caption") if isinstance(entry, dict) else None
            if isinstance(captions, str):
                captions = [captions]
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("image"), str)
                or not isinstance(captions, list)
                or not all(isinstance(c, str) for c in captions)
            ):
                raise DataError(
                    f'{self.source}: entry {i}: expected {{"image": str, "caption": [str, ...]}}, got {str(entry)[:80]}'
                )
            cleaned = [c for c in (clean_text(c) for c in captions) if c]
            if cleaned:
                entries.append((base / entry["image"], cleaned))
        ok, self.unreadable = filter_images(
            str(self.source), [str(p) for p, _ in entries], [p for p, _ in entries], on_bad_image
        )
        self.listed = len(entries)
        entries = [entries[k] for k in ok]
        if not entries:
            raise DataError(f"{self.source}: no usable images with captions")
        self.images: list[Path] = [p for p, _ in entries]
        self.captions: list[str] = [c for _, caps in entries for c in caps]
        self.text_to_image = torch.tensor([i for i, (_, caps) in enumerate(entries) for _ in caps], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self._reader.load(self.images[index], str(self.images[index])))

    @property
    def decode_failures(self) -> int:
        return self._reader.decode_failures


def _retrieval_file(path: Path, image_root_given: bool = False) -> bool:
    return path.is_file() and path.suffix.lower() == ".json"


register_reader(
    Reader(
        "retrieval-json",
        "retrieval",
        'a retrieval JSON ([{"image", "caption": [...]}])',
        _retrieval_file,
        RetrievalDataset,
    )
)
