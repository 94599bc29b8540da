"""The datasets the trainer and the evaluators read, whatever the layout on disk (specs/data.md).

Importing this module registers the built-in readers (`clipctl.data.layouts`): a pairs JSON, the course's pairs
JSON with its image root, a folder of WebDataset shards, a retrieval JSON and a class folder. `reader_for` picks
the reader of a path for the roles a caller accepts; `PairsDataset` turns any pairs reader's samples into the
indexed training set; `open_eval_set` opens a retrieval or classification set. The bad-image policy is
`clipctl.data.images`'.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from clipctl.console import warn
from clipctl.data import class_folder, pairs_json, retrieval_json, webdataset
from clipctl.data.class_folder import ClassificationDataset
from clipctl.data.images import IMAGE_EXTS, ImageReader, OnBadImage, check_mode, filter_images
from clipctl.data.layouts import READERS, PairsSource, Reader
from clipctl.data.records import Role
from clipctl.data.retrieval_json import RetrievalDataset
from clipctl.data.text import TextTokenizer, clean_caption
from clipctl.data.webdataset import wds_key
from clipctl.errors import DataError, UsageError

__all__ = [
    "IMAGE_EXTS",
    "ClassificationDataset",
    "PairsDataset",
    "RetrievalDataset",
    "augment_seed",
    "open_eval_set",
    "reader_for",
    "sample_identity",
    "wds_key",
]
BUILTIN_LAYOUTS = (pairs_json, webdataset, retrieval_json, class_folder)  # imported for their registrations


def reader_for(path: Path, roles: Sequence[Role], *, image_root_given: bool = False, what: str = "") -> Reader:
    """The first registered reader of one of `roles` that takes `path`; else a one-line DataError naming the path,
    what it is and the layouts that fit (`what`: the setting it came from, e.g. "eval.val_retrieval")."""
    path = Path(path)
    candidates = [r for r in READERS.values() if r.role in roles]
    for reader in candidates:
        if reader.accepts(path, image_root_given):
            return reader
    where = f"{what} = {str(path)!r}" if what else str(path)
    found = "no such file or folder" if not path.exists() else ("a folder" if path.is_dir() else "a file")
    wanted = "; ".join(dict.fromkeys(r.describe for r in candidates))
    raise DataError(f"{where}: {found}; expected {wanted}")


def open_eval_set(
    path: Path,
    role: Role,
    transform: Callable,
    *,
    on_bad_image: OnBadImage = "skip",
    what: str = "",
    clean_text: Callable[[str], str] = clean_caption,
) -> Any:
    """The retrieval or classification dataset at `path`, read by the reader of its layout. A retrieval set's
    captions are cleaned with `clean_text` as it is read; a classification set's prompts when they are filled
    (`evaluate_split`'s `clean_text`)."""
    options = {"clean_text": clean_text} if role == "retrieval" else {}
    return reader_for(path, (role,), what=what).read(Path(path), transform, on_bad_image=on_bad_image, **options)


def sample_identity(keys: Sequence[str], captions: Sequence[str]) -> str:
    """sha256 of the ordered (key, caption) pairs: which sample each dense index 0..N-1 is.

    Per-sample loss state is stored by index, so a reordered, regenerated or edited dataset of the same size
    would hand every sample another's state; the keys are relative (image path as written, shard member), so
    moving the data root keeps the identity.
    """
    digest = hashlib.sha256()
    for key, caption in zip(keys, captions, strict=True):
        digest.update(f"{key}\t{caption}\n".encode())
    return digest.hexdigest()


class PairsDataset(Dataset):
    """Training pairs; item -> (image tensor, token ids (max_len,), dense index in [0, len)).

    `source`: a path of any pairs layout (`reader_for`): a pairs JSON (`image` relative to the JSON's folder, or to
    `image_root` for the course's JSON) or a folder of WebDataset `.tar` shards (samples ordered by their `.json`
    integer `key`). With `train_fraction < 1` a seeded subset is kept in its original order and re-indexed 0..n-1;
    `subset_indices[i]` is the position of item i in the full source (None when every source item is kept).
    Passing a stored `subset_indices` back reproduces that exact subset. A key `(index, epoch)` (what
    `build_train_loader` passes) makes augmentation a pure function of (seed, epoch, index), identical across
    workers and resumes. Captions are cleaned with `clean_text` (the model's caption cleaning) as they are read;
    assigning `.tokenizer` tokenises every caption once.
    """

    def __init__(
        self,
        source: str | Path,
        transform: Callable,
        tokenizer: TextTokenizer | None = None,
        *,
        train_fraction: float = 1.0,
        seed: int = 0,
        on_bad_image: OnBadImage = "skip",
        image_root: str | Path | None = None,
        subset_indices: Sequence[int] | None = None,
        clean_text: Callable[[str], str] = clean_caption,
    ) -> None:
        check_mode(on_bad_image)
        if not 0 < train_fraction <= 1:
            raise UsageError(f"data.train_fraction = {train_fraction}: expected a value in (0, 1]")
        self.source = Path(source)
        self.transform = transform
        self.seed = int(seed)
        self._reader = ImageReader(on_bad_image)
        reader = reader_for(self.source, ("pairs",), image_root_given=bool(image_root), what="data.train")
        raw = reader.read(self.source, Path(image_root) if image_root else None)
        positions = self._positions(len(raw.items), train_fraction, subset_indices)
        cleaned = {i: clean_text(raw.captions[i]) for i in positions}
        positions = self._usable(raw, positions, cleaned, on_bad_image)
        self._load = raw.load
        self._items = [raw.items[i] for i in positions]
        self._names = [raw.names[i] for i in positions]
        self.captions = [cleaned[i] for i in positions]
        self.identity = sample_identity([raw.keys[i] for i in positions], self.captions)
        self.subset_indices: list[int] | None = None if positions == list(range(len(raw.items))) else positions
        self.tokens: torch.Tensor | None = None
        self._tokenizer: TextTokenizer | None = None
        if tokenizer is not None:
            self.tokenizer = tokenizer

    def _positions(self, total: int, train_fraction: float, subset_indices: Sequence[int] | None) -> list[int]:
        """The source positions this dataset keeps: a stored subset, a seeded fraction, or all of them."""
        if subset_indices is not None:
            positions = sorted({int(i) for i in subset_indices})
            if not positions or positions[0] < 0 or positions[-1] >= total:
                raise DataError(
                    f"{self.source}: stored subset indices do not fit its {total} pairs; the data changed since "
                    f"the run started (restart the run, or restore the data)"
                )
            return positions
        if train_fraction < 1:
            count = max(1, int(round(total * train_fraction)))
            rng = np.random.default_rng([self.seed, total, count])
            return sorted(int(i) for i in rng.choice(total, size=count, replace=False))
        return list(range(total))

    def _usable(
        self, raw: PairsSource, positions: list[int], cleaned: dict[int, str], on_bad_image: OnBadImage
    ) -> list[int]:
        """`positions` without the pairs whose caption cleans to nothing or whose image header does not open."""
        selected = len(positions)
        empty = [i for i in positions if not cleaned[i]]
        if empty:
            warn(
                f"{self.source}: skipped {len(empty)} pairs whose caption is empty after cleaning (first: "
                f"{raw.names[empty[0]]})"
            )
            dropped = set(empty)
            positions = [i for i in positions if i not in dropped]
        if raw.check_headers:
            ok, _ = filter_images(
                str(self.source),
                [raw.names[i] for i in positions],
                [raw.load(raw.items[i]) for i in positions],
                on_bad_image,
            )
            positions = [positions[k] for k in ok]
        if not positions:
            raise DataError(f"{self.source}: no usable pairs (all captions empty or images unreadable)")
        self.skipped = selected - len(positions)
        return positions

    @property
    def tokenizer(self) -> TextTokenizer | None:
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: TextTokenizer) -> None:
        """Tokenise every caption once (the tokenizer is often trained on `self.captions` first)."""
        self._tokenizer = tokenizer
        self.tokens = tokenizer.encode(self.captions)

    def __len__(self) -> int:
        return len(self._items)

    def image(self, index: int) -> Image.Image:
        return self._reader.load(self._load(self._items[index]), self._names[index])

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self.tokens is None:
            raise RuntimeError("PairsDataset: assign .tokenizer before reading items")
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), None)
        image = self.image(index)
        if epoch is None:
            tensor = self.transform(image)
        else:
            tensor = seeded_transform(self.transform, image, augment_seed(self.seed, epoch, index))
        return tensor, self.tokens[index], index

    @property
    def decode_failures(self) -> int:
        return self._reader.decode_failures


def seeded_transform(transform: Callable, image: Image.Image, seed: int) -> torch.Tensor:
    """`transform(image)` with its random draws seeded by `seed`; the caller's RNG stream is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed
        return transform(image)  # also queues a CUDA seed, with a costly stack capture per call


def augment_seed(seed: int, epoch: int, index: int) -> int:
    """The RNG seed of one sample's augmentation in one epoch."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)
