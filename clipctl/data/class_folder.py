"""A classification set (ImageNet-like, specs/data.md format 3): `<class_id>/*.JPEG` folders plus `classnames.txt`
(one name per class, in sorted folder order) and `templates.txt` (prompt templates with `{}`); or a split list
(`select.txt`: one `class_id/file` per line) inside such a folder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from clipctl.data.images import IMAGE_EXTS, ImageReader, OnBadImage, check_mode, filter_images
from clipctl.data.layouts import Reader, register_reader
from clipctl.errors import DataError


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_split_list(path: Path) -> list[str]:
    try:
        return _read_lines(path)
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable split list ({err}); re-fetch the dataset") from None


def _listed_samples(root: Path, members: list[str], class_ids: list[str]) -> list[tuple[Path, int]]:
    """(path, label) of each `class_id/file` line of a split list; a line naming no class folder is a DataError."""
    label_of = {cid: label for label, cid in enumerate(class_ids)}
    samples = []
    for line in members:
        cid, _, name = line.partition("/")
        if cid not in label_of or not name:
            raise DataError(f"{root}: split list line {line!r} names no class folder; re-fetch the dataset")
        samples.append((root / cid / name, label_of[cid]))
    return samples


class ClassificationDataset(Dataset):
    """ImageNet-like folders: label = position of the class folder in sorted order; item -> (image, label).

    `classnames` (one per class, in label order) and `templates` (with "{}") come from `classnames.txt`
    and `templates.txt` unless given (e.g. the vendored OpenAI ImageNet names). `root` may also be a split
    list (`select.txt`: one `class_id/file` per line, relative to its folder): only the listed images are
    read, labelled by every class folder of that folder, so every split of one set shares the labels.
    `.listed` counts the image files found, `.unreadable` names (path, reason) of those dropped.
    """

    # Over 60 lines: split list, class folders, names and templates are checked in one pass, each with its error.
    def __init__(
        self,
        root: str | Path,
        transform: Callable,
        *,
        on_bad_image: OnBadImage = "skip",
        classnames: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
    ) -> None:
        check_mode(on_bad_image)
        self.root = Path(root)
        self.transform = transform
        self._reader = ImageReader(on_bad_image)
        members = _read_split_list(self.root) if self.root.is_file() else None
        if members is not None:
            self.root = self.root.parent
        if not self.root.is_dir():
            raise DataError(
                f"{self.root}: no such folder; expected class folders plus classnames.txt and templates.txt"
            )
        self.class_ids = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.class_ids:
            raise DataError(f"{self.root}: no class folders found")
        if classnames is None:
            names_file = self.root / "classnames.txt"
            if not names_file.is_file():
                raise DataError(
                    f"{names_file}: missing; write one class name per line in class-folder order "
                    f"({len(self.class_ids)} lines)"
                )
            classnames = _read_lines(names_file)
        if len(classnames) != len(self.class_ids):
            raise DataError(
                f"{self.root}: {len(classnames)} class names for {len(self.class_ids)} class folders; give "
                "one name per folder"
            )
        self.classnames = list(classnames)
        if templates is None:
            templates_file = self.root / "templates.txt"
            templates = _read_lines(templates_file) if templates_file.is_file() else ["a photo of a {}."]
        bad = [t for t in templates if "{}" not in t]
        if bad or not templates:
            raise DataError(
                f"{self.root / 'templates.txt'}: every template needs a {{}} placeholder (got "
                f"{bad[0] if bad else 'none'!r})"
            )
        self.templates = list(templates)
        if members is None:
            samples = [
                (path, label)
                for label, cid in enumerate(self.class_ids)
                for path in sorted((self.root / cid).iterdir())
                if path.suffix.lower() in IMAGE_EXTS
            ]
        else:
            samples = _listed_samples(self.root, members, self.class_ids)
        ok, self.unreadable = filter_images(
            str(self.root), [str(p) for p, _ in samples], [p for p, _ in samples], on_bad_image
        )
        self.listed = len(samples)
        self.samples = [samples[k] for k in ok]
        if not self.samples:
            raise DataError(f"{self.root}: no readable images in the class folders")
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(self._reader.load(path, str(path))), label

    @property
    def decode_failures(self) -> int:
        return self._reader.decode_failures


def _class_folder(path: Path, image_root_given: bool = False) -> bool:
    return path.is_dir() or (path.is_file() and path.suffix.lower() == ".txt")


register_reader(
    Reader(
        "class-folder",
        "classification",
        "a class folder (<class>/*.JPEG + classnames.txt + templates.txt) or its split list (.txt)",
        _class_folder,
        ClassificationDataset,
    )
)
