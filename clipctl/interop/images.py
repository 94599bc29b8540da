"""One's own images for `clipctl embed` and `clipctl zeroshot`: a folder (searched recursively) or a glob, read in a
stable order and loaded in batches exactly as `clipctl eval` loads its images (RGB, then the evaluation transform)."""

from __future__ import annotations

import glob
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from clipctl.console import warn
from clipctl.data.datasets import IMAGE_EXTS
from clipctl.data.loader import loader_worker_init
from clipctl.errors import DataError

_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def list_images(spec: str | Path) -> list[Path]:
    """The image files (by extension) of a folder, recursively, or of a glob (`**` recurses), sorted; hidden files
    and folders are left out. Nothing found is a DataError."""
    path = Path(spec).expanduser()
    if path.is_file():
        found = [path]
    elif path.is_dir():
        found = [p for p in path.rglob("*") if not _hidden(p.relative_to(path))]
    else:
        found = [Path(p) for p in glob.glob(str(path), recursive=True)]
    images = sorted(p for p in found if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not images:
        raise DataError(
            f"{spec}: no images ({', '.join(IMAGE_EXTS)}) found; give a folder, a file or a glob such as "
            "'photos/**/*.jpg' (quoted, so the shell leaves it to clipctl)"
        )
    return images


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def readable_images(paths: list[Path]) -> list[Path]:
    """The images whose header opens (the cheap check `clipctl eval` makes); the others are skipped with a warning,
    and none left is a DataError."""
    kept, skipped = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                if image.width < 1 or image.height < 1:
                    raise ValueError("zero-sized image")
            kept.append(path)
        except _READ_ERRORS as err:
            skipped.append((path, str(err) or type(err).__name__))
    if skipped:
        warn(f"skipped {len(skipped)} of {len(paths)} unreadable images (first: {skipped[0][0]}: {skipped[0][1]})")
    if not kept:
        raise DataError(f"none of the {len(paths)} images could be read (first: {skipped[0][0]}: {skipped[0][1]})")
    return kept


class ImageFiles(Dataset):
    """Item i -> (transformed image i, i)."""

    def __init__(self, paths: list[Path], transform: Callable) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except _READ_ERRORS as err:
            raise DataError(f"{path}: unreadable image ({err}); fix or remove it and run the command again") from None
        return self.transform(rgb), index


def image_loader(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device) -> DataLoader:
    """In order, batched, with the worker settings `clipctl eval` uses."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        worker_init_fn=loader_worker_init() if num_workers > 0 else None,
        pin_memory=device.type == "cuda",
    )
