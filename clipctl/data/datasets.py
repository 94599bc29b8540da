"""Readers for the three on-disk formats of specs/data.md: pairs (JSON list or WebDataset tar shards),
retrieval (image + caption list) and classification (class folders + classnames.txt + templates.txt).

Bad images: each reader opens every image header once at construction. With `on_bad_image="skip"` the
unreadable ones are dropped before the dense index is assigned (counted, one warning); with "error" the
first one stops everything with its file name. An image that only fails later, at full decode (e.g. a
truncated JPEG), is replaced by a blank image in "skip" mode (counted, warned once per file) so batch
shapes, and the index contract the per-sample loss buffers rely on, stay intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from clipctl.console import warn
from clipctl.data.text import TextTokenizer, clean_caption
from clipctl.errors import DataError, UsageError

OnBadImage = Literal["skip", "error"]
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def _check_mode(on_bad_image: str) -> None:
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


def _read_json(path: Path) -> Any:
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


class _ImageReader:
    """Decodes images for one dataset and applies the bad-image policy at decode time."""

    def __init__(self, on_bad_image: OnBadImage) -> None:
        _check_mode(on_bad_image)
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


def _filter_images(
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


# ----------------------------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class _ShardMember:
    shard: int
    offset: int
    size: int
    name: str


def wds_key(member_name: str) -> tuple[str, str]:
    """WebDataset convention: the sample key is the path up to the first dot of the basename."""
    folder, _, base = member_name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _scan_shards(folder: Path) -> tuple[list[Path], list[tuple[_ShardMember, str]]]:
    """(shards, [(image member, caption)]) for the complete samples of the `.tar` shards in `folder`, in key order.

    Only headers and the small .txt/.json members are read; images are read by offset on access.
    """
    shards = sorted(p for p in folder.iterdir() if p.suffix == ".tar" and p.is_file())
    if not shards:
        raise DataError(f"{folder}: no .tar shards found; expected WebDataset shards (.jpg/.png + .txt + .json)")
    samples: list[tuple[int | None, _ShardMember, str]] = []
    incomplete = 0
    for shard_idx, shard in enumerate(shards):
        groups: dict[str, dict[str, Any]] = {}
        order: list[str] = []
        try:
            with tarfile.open(shard, mode="r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    key, ext = wds_key(info.name)
                    if key not in groups:
                        groups[key] = {}
                        order.append(key)
                    if ext in ("jpg", "jpeg", "png", "webp"):
                        groups[key]["image"] = _ShardMember(
                            shard_idx, info.offset_data, info.size, f"{shard.name}:{info.name}"
                        )
                    elif ext in ("txt", "json"):
                        handle = tar.extractfile(info)
                        groups[key][ext] = handle.read().decode("utf-8", "replace") if handle else ""
        except (tarfile.TarError, OSError) as err:
            raise DataError(
                f"{shard}: unreadable tar shard ({err}); re-fetch the dataset or remove the shard"
            ) from None
        for key in order:
            group = groups[key]
            if "image" not in group or "txt" not in group:
                incomplete += 1
                continue
            sort_key = None
            if "json" in group:
                try:
                    value = json.loads(group["json"]).get("key")
                    sort_key = int(value) if value is not None else None
                except (ValueError, AttributeError, TypeError):
                    raise DataError(f'{shard}:{key}.json: expected a JSON object with an integer "key"') from None
            samples.append((sort_key, group["image"], group["txt"]))
    if incomplete:
        warn(f"{folder}: skipped {incomplete} samples without both an image and a .txt caption")
    with_keys = sum(1 for s in samples if s[0] is not None)
    if with_keys not in (0, len(samples)):
        raise DataError(
            f'{folder}: {len(samples) - with_keys} samples lack an integer "key" in their .json; give every '
            "sample one or none"
        )
    if with_keys:
        keys = [s[0] for s in samples]
        if len(set(keys)) != len(keys):
            raise DataError(f'{folder}: duplicate sample "key" values in the .json files; keys must be unique')
        samples.sort(key=lambda s: s[0])
    return shards, [(member, caption) for _, member, caption in samples]


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

    `source`: a pairs JSON list (`image` relative to the JSON's folder or `image_root`) or a folder of
    WebDataset `.tar` shards (samples ordered by their `.json` integer `key`). With `train_fraction < 1`
    a seeded subset is kept in its original order and re-indexed 0..n-1; `subset_indices[i]` is the
    position of item i in the full source (None when every source item is kept). Passing a stored
    `subset_indices` back reproduces that exact subset. A key `(index, epoch)` (what
    `build_train_loader` passes) makes augmentation a pure function of (seed, epoch, index), identical
    across workers and resumes. Assigning `.tokenizer` tokenises every caption once.
    """

    # Over 60 lines: the signature is a fifth of it; the rest checks, subsets and indexes the source in one pass.
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
    ) -> None:
        _check_mode(on_bad_image)
        if not 0 < train_fraction <= 1:
            raise UsageError(f"data.train_fraction = {train_fraction}: expected a value in (0, 1]")
        self.source = Path(source)
        self.transform = transform
        self.seed = int(seed)
        self._reader = _ImageReader(on_bad_image)
        self._shards: list[Path] = []
        self._handles: dict[int, Any] = {}
        self._handles_pid = -1
        if self.source.is_dir():
            self._shards, raw = _scan_shards(self.source)
            names = keys = [member.name for member, _ in raw]
        else:
            root = Path(image_root) if image_root else self.source.parent
            raw, keys = self._read_pairs_json(self.source)
            names = [str(root / key) for key in keys]
            raw = [(root / key, caption) for key, caption in raw]
        total = len(raw)
        positions = list(range(total))
        if subset_indices is not None:
            positions = sorted({int(i) for i in subset_indices})
            if not positions or positions[0] < 0 or positions[-1] >= total:
                raise DataError(
                    f"{self.source}: stored subset indices do not fit its {total} pairs; the data changed since "
                    f"the run started (restart the run, or restore the data)"
                )
        elif train_fraction < 1:
            count = max(1, int(round(total * train_fraction)))
            rng = np.random.default_rng([self.seed, total, count])
            positions = sorted(int(i) for i in rng.choice(total, size=count, replace=False))
        cleaned = {i: clean_caption(raw[i][1]) for i in positions}
        empty = [i for i in positions if not cleaned[i]]
        if empty:
            warn(
                f"{self.source}: skipped {len(empty)} pairs whose caption is empty after cleaning (first: "
                f"{names[empty[0]]})"
            )
        selected = len(positions)
        positions = [i for i in positions if cleaned[i]]
        if not self._shards:
            ok, _ = _filter_images(
                str(self.source), [names[i] for i in positions], [raw[i][0] for i in positions], on_bad_image
            )
            positions = [positions[k] for k in ok]
        if not positions:
            raise DataError(f"{self.source}: no usable pairs (all captions empty or images unreadable)")
        self.skipped = selected - len(positions)
        self.subset_indices: list[int] | None = None if positions == list(range(total)) else positions
        self._items = [raw[i][0] for i in positions]
        self._names = [names[i] for i in positions]
        self.captions = [cleaned[i] for i in positions]
        self.identity = sample_identity([keys[i] for i in positions], self.captions)
        self.tokens: torch.Tensor | None = None
        self._tokenizer: TextTokenizer | None = None
        if tokenizer is not None:
            self.tokenizer = tokenizer

    @staticmethod
    def _read_pairs_json(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
        """[(image path as written, caption)] and the image paths as written (relative to the image root)."""
        data = _read_json(path)
        if not isinstance(data, list):
            raise DataError(f'{path}: expected a JSON list of {{"image", "caption", "image_id"}} objects')
        raw, names = [], []
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
            raw.append((entry["image"], entry["caption"]))
            names.append(entry["image"])
        return raw, names

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

    def _bytes_from_shard(self, member: _ShardMember) -> bytes:
        if self._handles_pid != os.getpid():  # a DataLoader worker must not share the parent's file offsets
            self._handles, self._handles_pid = {}, os.getpid()
        handle = self._handles.get(member.shard)
        if handle is None:
            handle = self._handles[member.shard] = open(self._shards[member.shard], "rb")
        handle.seek(member.offset)
        return handle.read(member.size)

    def image(self, index: int) -> Image.Image:
        item = self._items[index]
        source = self._bytes_from_shard(item) if isinstance(item, _ShardMember) else item
        return self._reader.load(source, self._names[index])

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self.tokens is None:
            raise RuntimeError("PairsDataset: assign .tokenizer before reading items")
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), None)
        image = self.image(index)
        if epoch is None:
            tensor = self.transform(image)
        else:
            with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left untouched
                torch.default_generator.manual_seed(
                    augment_seed(self.seed, epoch, index)
                )  # CPU only: torch.manual_seed
                tensor = self.transform(image)  # also queues a CUDA seed, with a costly stack capture per call
        return tensor, self.tokens[index], index

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"], state["_handles_pid"] = {}, -1
        return state

    @property
    def decode_failures(self) -> int:
        return self._reader.decode_failures


def augment_seed(seed: int, epoch: int, index: int) -> int:
    """The RNG seed of one sample's augmentation in one epoch."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


# ------------------------------------------------------------------------------------------- retrieval


class RetrievalDataset(Dataset):
    """COCO-like retrieval set: item -> image tensor; `.captions`, `.text_to_image` (caption -> image index).

    Captions are cleaned; empty ones are dropped, and so is an image left without captions or whose
    header does not open (skip mode). `.listed` counts the images with captions, `.unreadable` names
    (path, reason) of those dropped, so evaluation can say what it scored out of what.
    """

    def __init__(
        self,
        source: str | Path,
        transform: Callable,
        *,
        on_bad_image: OnBadImage = "skip",
        image_root: str | Path | None = None,
    ) -> None:
        _check_mode(on_bad_image)
        self.source = Path(source)
        self.transform = transform
        self._reader = _ImageReader(on_bad_image)
        base = Path(image_root) if image_root else self.source.parent
        data = _read_json(self.source)
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
            cleaned = [c for c in (clean_caption(c) for c in captions) if c]
            if cleaned:
                entries.append((base / entry["image"], cleaned))
        ok, self.unreadable = _filter_images(
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


# -------------------------------------------------------------------------------------- classification


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
        _check_mode(on_bad_image)
        self.root = Path(root)
        self.transform = transform
        self._reader = _ImageReader(on_bad_image)
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
        ok, self.unreadable = _filter_images(
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
