"""`shapes`: the embedded synthetic benchmark, generated locally from a seed (specs/data.md).

8 colours x 8 shapes, 2 sizes, a 3x3 grid of positions, textured backgrounds. Train pairs have 1-3
objects, partial paraphrased captions, a Zipf long tail over (colour, shape) through a seeded
permutation, and 10% mismatched captions; val/test are COCO-style retrieval sets (uniform classes, 5
captions per image); zeroshot_val/zeroshot are balanced single-object class folders (the ImageNet
stand-in). Everything is drawn from per-split seeded generators in the parent process; workers only
render, so the bytes do not depend on the number of workers. PNGs carry no timestamps.

The record (registered at the end) treats it like every other dataset: its options model is `ShapesConfig`
(`data fetch shapes --seed 3`, the recipe's `data.shapes_*` keys), the options are its identity, and a run
makes it when it is absent but never replaces a copy made with other options.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import multiprocessing
import os
import random
import struct
import time
import zlib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw
from pydantic import Field

from clipctl import __version__
from clipctl.atomic import atomic_write_bytes
from clipctl.console import ProgressReporter, info
from clipctl.data.manifest import check_hashes, read_manifest, sha256_file, tree_digest, write_manifest
from clipctl.data.records import Benchmark, DatasetOptions, DatasetSpec, Preparer, Split, register_dataset
from clipctl.data.staging import staged
from clipctl.errors import DataError

DATASET_ID = "shapes"
GENERATOR_VERSION = 1
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "cyan": (30, 215, 225),
    "blue": (35, 65, 225),
    "purple": (140, 45, 195),
    "pink": (250, 125, 195),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon")
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
POSITION_PHRASES = (
    "in the top left",
    "at the top",
    "in the top right",
    "on the left",
    "in the center",
    "on the right",
    "in the bottom left",
    "at the bottom",
    "in the bottom right",
)
BACKGROUNDS = ("plain", "striped", "checkered", "dotted", "noisy", "gradient")
CLASSNAMES = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)
TEMPLATES = (
    "a photo of a {}.",
    "a {} shape.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a {} on a textured background.",
    "a small {}.",
    "a large {}.",
)
CAPTION_TEMPLATES = (
    "{objs}",
    "a picture of {objs}",
    "an image with {objs}",
    "there is {objs}",
    "a photo showing {objs}",
    "a drawing of {objs}",
    "here we see {objs}",
    "{objs} in the picture",
)
BG_TEMPLATES = ("{objs} on a {bg} background", "a {bg} background with {objs}", "{objs}, {bg} background")
SPLITS = {
    "train": Split("train.json", "pairs"),
    "val": Split("val.json", "retrieval"),
    "test": Split("test.json", "retrieval"),
    "zeroshot_val": Split("zeroshot_val", "classification"),
    "zeroshot": Split("zeroshot", "classification"),
}
_SPLIT_CODES = {"train": 1, "val": 2, "test": 3, "zeroshot_val": 4, "zeroshot": 5, "zipf": 6}


class ShapesConfig(DatasetOptions):
    """Generation parameters, the options model of the `shapes` record: `data fetch shapes --seed 3` sets one;
    all of them are recorded in the manifest and together are the identity of a generated copy."""

    seed: int = Field(0, ge=0)
    train_size: int = Field(20_000, ge=100)
    image_size: int = Field(64, ge=32, le=512)
    eval_images: int = Field(1_000, ge=1)
    captions_per_image: int = Field(5, ge=1)
    zeroshot_val_per_class: int = Field(20, ge=1)
    zeroshot_per_class: int = Field(25, ge=1)
    noise_fraction: float = Field(0.10, ge=0, le=1)
    zipf_exponent: float = Field(1.0, ge=0)


# ------------------------------------------------------------------------------------ scene sampling


class Obj(NamedTuple):
    cls: int  # colour * 8 + shape
    size: int
    pos: int
    dx: float  # jitter inside the cell, in cell units
    dy: float
    angle: float  # degrees
    tint: tuple[int, int, int]


class Scene(NamedTuple):
    bg: int
    bg_base: tuple[int, int, int]
    bg_amp: float
    bg_period: float
    bg_angle: float
    bg_seed: int
    objects: tuple[Obj, ...]


class Rand:
    """Scalar draws for scene planning, built only on `random.Random.random()` (whose stream Python guarantees
    across versions); numpy's per-call overhead made planning 10x slower than rendering."""

    def __init__(self, seed: int, split: str) -> None:
        self._random = random.Random((int(seed) << 8) | _SPLIT_CODES[split]).random

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self._random()

    def below(self, n: int) -> int:
        return int(self._random() * n)  # random() < 1, so this is at most n - 1 for any n below 2**52

    def chance(self, p: float) -> bool:
        return self._random() < p

    def weighted(self, cumulative: list[float]) -> int:
        return min(bisect.bisect_right(cumulative, self._random() * cumulative[-1]), len(cumulative) - 1)

    def sample(self, n: int, k: int) -> list[int]:
        """k distinct values of range(n) in random order (partial Fisher-Yates)."""
        pool = list(range(n))
        for i in range(k):
            j = i + self.below(n - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]


def zipf_probabilities(seed: int, exponent: float) -> list[float]:
    """P(class) for train objects: rank r (through a seeded permutation) gets weight 1/(r+1)^exponent."""
    order = Rand(seed, "zipf").sample(len(CLASSNAMES), len(CLASSNAMES))
    weights = [0.0] * len(CLASSNAMES)
    for rank, cls in enumerate(order):
        weights[cls] = 1.0 / (rank + 1) ** exponent
    total = sum(weights)
    return [w / total for w in weights]


def _sample_scene(rng: Rand, classes: list[int]) -> Scene:
    positions = rng.sample(len(POSITIONS), len(classes))
    objects = tuple(
        Obj(
            cls=c,
            size=rng.below(2),
            pos=p,
            dx=rng.uniform(-0.12, 0.12),
            dy=rng.uniform(-0.12, 0.12),
            angle=rng.uniform(-15, 15),
            tint=(rng.below(25) - 12, rng.below(25) - 12, rng.below(25) - 12),
        )
        for c, p in zip(classes, positions)
    )
    grey = rng.uniform(60, 200)
    base = tuple(int(min(255.0, max(0.0, grey + rng.uniform(-22, 22)))) for _ in range(3))
    return Scene(
        bg=rng.below(len(BACKGROUNDS)),
        bg_base=base,
        bg_amp=rng.uniform(12, 28),
        bg_period=rng.uniform(5, 14),
        bg_angle=rng.uniform(0, math.pi),
        bg_seed=rng.below(2**31),
        objects=objects,
    )


# ----------------------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(obj: Obj, rng: Rand, p_colour: float, p_size: float, p_pos: float) -> str:
    colour, shape = CLASSNAMES[obj.cls].split()
    words = ([SIZES[obj.size]] if rng.chance(p_size) else []) + ([colour] if rng.chance(p_colour) else []) + [shape]
    phrase = f"{_article(words[0])} {' '.join(words)}"
    return f"{phrase} {POSITION_PHRASES[obj.pos]}" if rng.chance(p_pos) else phrase


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _caption(scene: Scene, rng: Rand, partial: bool) -> str:
    """One paraphrase: web-like (partial: some objects, some attributes) or descriptive (all objects)."""
    objects = list(scene.objects)
    keep = 1 + rng.below(len(objects) - 1) if partial and len(objects) > 1 and rng.chance(0.4) else len(objects)
    objects = [objects[i] for i in rng.sample(len(objects), keep)]
    p_colour, p_size, p_pos = (0.9, 0.35, 0.35) if partial else (1.0, 0.5, 0.5)
    objs = _join([_object_phrase(o, rng, p_colour, p_size, p_pos) for o in objects])
    if rng.chance(0.3):
        return BG_TEMPLATES[rng.below(len(BG_TEMPLATES))].format(objs=objs, bg=BACKGROUNDS[scene.bg])
    return CAPTION_TEMPLATES[rng.below(len(CAPTION_TEMPLATES))].format(objs=objs)


# ---------------------------------------------------------------------------------------- rendering


@lru_cache(maxsize=4)
def _axis(size: int) -> np.ndarray:
    return np.arange(size, dtype=np.float32)


@lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    """16 fixed unit-variance noise fields of twice the image side; a scene takes a window of one of them
    (seeding a generator per image cost more than drawing the image)."""
    return np.random.default_rng(GENERATOR_VERSION).standard_normal((16, 2 * size, 2 * size), dtype=np.float32)


def _background(scene: Scene, size: int) -> np.ndarray:
    """Texture from separable 1-D terms (outer products), which keeps it cheap at 25k images."""
    axis = _axis(size)
    kind = BACKGROUNDS[scene.bg]
    amp, period = scene.bg_amp, scene.bg_period
    cos_a, sin_a = math.cos(scene.bg_angle), math.sin(scene.bg_angle)
    if kind == "striped":  # sign(sin(k(x cos + y sin))) via the angle-sum identity
        kx, ky = 2 * math.pi * cos_a / period * axis, 2 * math.pi * sin_a / period * axis
        texture = amp * np.sign(np.outer(np.cos(ky), np.sin(kx)) + np.outer(np.sin(ky), np.cos(kx)))
    elif kind == "checkered":
        wave = np.sin(2 * math.pi * axis / period)
        texture = amp * np.sign(np.outer(wave, wave))
    elif kind == "dotted":
        wave = np.sin(2 * math.pi * axis / period)
        texture = 1.5 * amp * (np.outer(wave, wave) > 0.55)
    elif kind == "noisy":
        field, ox, oy = scene.bg_seed % 16, (scene.bg_seed >> 4) % size, (scene.bg_seed >> 12) % size
        texture = (amp / 2.5) * _noise_bank(size)[field, oy : oy + size, ox : ox + size]
    elif kind == "gradient":
        along = np.add.outer(sin_a * axis, cos_a * axis)
        texture = 1.5 * amp * (along / max(float(along.max()), 1.0) * 2 - 1)
    else:
        texture = np.zeros((size, size), np.float32)
    out = texture[..., None] + np.asarray(scene.bg_base, np.float32)
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def _polygon(shape: str, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(-0.82, -0.82), (0.82, -0.82), (0.82, 0.82), (-0.82, 0.82)]
    elif shape == "diamond":
        pts = [(0, -1), (0.68, 0), (0, 1), (-0.68, 0)]
    elif shape == "triangle":
        pts = [(math.cos(math.radians(a)), math.sin(math.radians(a)) + 0.15) for a in (-90, 30, 150)]
    elif shape == "hexagon":
        pts = [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in range(0, 360, 60)]
    elif shape == "star":
        pts = [
            (
                (1.0 if k % 2 == 0 else 0.45) * math.cos(math.radians(-90 + 36 * k)),
                (1.0 if k % 2 == 0 else 0.45) * math.sin(math.radians(-90 + 36 * k)),
            )
            for k in range(10)
        ]
    else:  # cross
        w = 0.34
        pts = [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ]
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(r * (x * c - y * s), r * (x * s + y * c)) for x, y in pts]


def _object_mask(obj: Obj, size: int) -> tuple[Image.Image, tuple[int, int]]:
    """The object drawn at 2x on a small canvas and box-downsampled (anti-aliased), with its paste offset."""
    cell = size / 3
    radius = cell * (0.42 if obj.size == 1 else 0.27)
    row, col = divmod(obj.pos, 3)
    cx, cy = (col + 0.5 + obj.dx) * cell, (row + 0.5 + obj.dy) * cell
    half = int(math.ceil(radius)) + 2
    mask = Image.new("L", (4 * half, 4 * half), 0)
    draw = ImageDraw.Draw(mask)
    centre, r2 = 2 * half, 2 * radius
    shape = SHAPES[obj.cls % len(SHAPES)]
    if shape in ("circle", "ring"):
        draw.ellipse((centre - r2, centre - r2, centre + r2, centre + r2), fill=255)
        if shape == "ring":
            inner = r2 * 0.55
            draw.ellipse((centre - inner, centre - inner, centre + inner, centre + inner), fill=0)
    else:
        draw.polygon([(centre + x, centre + y) for x, y in _polygon(shape, r2, obj.angle)], fill=255)
    return mask.resize((2 * half, 2 * half), Image.Resampling.BOX), (int(round(cx)) - half, int(round(cy)) - half)


def encode_png(rgb: np.ndarray) -> bytes:
    """A minimal RGB8 PNG: IHDR, one IDAT (filter 0 rows, zlib level 1), IEND; no timestamps or metadata.

    Why not Pillow's encoder: its per-row adaptive filtering took ~70% of the render time here and its
    output depends on encoder heuristics; this is 3.5x faster, byte-stable, and any PNG reader opens it.
    """
    height, width, _ = rgb.shape
    rows = np.empty((height, width * 3 + 1), np.uint8)
    rows[:, 0] = 0
    rows[:, 1:] = rgb.reshape(height, width * 3)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
        + chunk(b"IEND", b"")
    )


def render_png(scene: Scene, size: int) -> bytes:
    """The scene as deterministic PNG bytes."""
    image = Image.fromarray(_background(scene, size), "RGB")
    for obj in scene.objects:
        mask, offset = _object_mask(obj, size)
        base = COLOURS[CLASSNAMES[obj.cls].split()[0]]
        colour = tuple(min(255, max(0, b + t)) for b, t in zip(base, obj.tint))
        image.paste(colour, (offset[0], offset[1], offset[0] + mask.width, offset[1] + mask.height), mask)
    return encode_png(np.asarray(image))


def _render_chunk(args: tuple[str, int, list[tuple[str, Scene]]]) -> list[tuple[str, str]]:
    """Worker: render and write a chunk of images; returns (relative path, sha256) for the tree digest."""
    import hashlib

    folder, size, jobs = args
    out = []
    for rel, scene in jobs:
        data = render_png(scene, size)
        path = Path(folder) / rel
        path.write_bytes(data)
        out.append((rel, hashlib.sha256(data).hexdigest()))
    return out


# --------------------------------------------------------------------------------------- generation


def _plan(config: ShapesConfig) -> tuple[list[tuple[str, Scene]], dict[str, Any]]:
    """Every image to render and every annotation, drawn from per-split generators."""
    jobs: list[tuple[str, Scene]] = []
    probs = zipf_probabilities(config.seed, config.zipf_exponent)
    cumulative = list(itertools.accumulate(probs))
    rng = Rand(config.seed, "train")
    pairs, labels = [], []
    for i in range(config.train_size):
        classes = [rng.weighted(cumulative) for _ in range(1 + rng.below(3))]
        scene = _sample_scene(rng, classes)
        rel = f"train/{i:06d}.png"
        jobs.append((rel, scene))
        pairs.append({"image": rel, "caption": _caption(scene, rng, partial=True), "image_id": i})
        labels.append([o.cls for o in scene.objects])
    donors = rng.sample(config.train_size, int(round(config.noise_fraction * config.train_size)))
    noisy = sorted(donors)
    if len(donors) > 1:  # a cycle through a shuffled order: every chosen pair gets another pair's caption
        captions = {i: pairs[i]["caption"] for i in donors}
        for k, i in enumerate(donors):
            pairs[i]["caption"] = captions[donors[(k + 1) % len(donors)]]
    annotations: dict[str, Any] = {
        "train.json": pairs,
        "train_labels.json": {"classes": labels, "noisy": noisy, "class_probabilities": [round(p, 6) for p in probs]},
    }
    for split in ("val", "test"):
        rng = Rand(config.seed, split)
        entries = []
        for i in range(config.eval_images):
            scene = _sample_scene(rng, [rng.below(len(CLASSNAMES)) for _ in range(1 + rng.below(3))])
            rel = f"{split}/{i:06d}.png"
            jobs.append((rel, scene))
            entries.append(
                {
                    "image": rel,
                    "caption": [_caption(scene, rng, partial=False) for _ in range(config.captions_per_image)],
                    "image_id": i,
                }
            )
        annotations[f"{split}.json"] = entries
    for split, per_class in (("zeroshot_val", config.zeroshot_val_per_class), ("zeroshot", config.zeroshot_per_class)):
        rng = Rand(config.seed, split)
        for cls in range(len(CLASSNAMES)):
            for k in range(per_class):
                jobs.append((f"{split}/{class_folder(cls)}/{k:04d}.png", _sample_scene(rng, [cls])))
        annotations[f"{split}/classnames.txt"] = "\n".join(CLASSNAMES) + "\n"
        annotations[f"{split}/templates.txt"] = "\n".join(TEMPLATES) + "\n"
    return jobs, annotations


def class_folder(cls: int) -> str:
    """Folder of class `cls`: sorted folder order equals class-index order (like ImageNet wnids)."""
    return f"{cls:02d}_{CLASSNAMES[cls].replace(' ', '_')}"


def _chunks(jobs: list[tuple[str, Scene]], size: int) -> Iterator[list[tuple[str, Scene]]]:
    for start in range(0, len(jobs), size):
        yield jobs[start : start + size]


def _dump(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return (json.dumps(value, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


def generate_shapes(root: Path, config: ShapesConfig = ShapesConfig(), workers: int | None = None) -> dict[str, Any]:
    """Generate `shapes` under `root` and write its manifest; returns the manifest. (`clipctl data fetch shapes`
    and training make it through the record instead, which also takes the dataset's locks.)"""
    manifest = build_shapes(root, config, workers)
    write_manifest(root, DATASET_ID, manifest)
    return manifest


def build_shapes(root: Path, config: ShapesConfig, workers: int | None = None) -> dict[str, Any]:
    """Render every image and annotation into a staged folder swapped in as `<root>/shapes`; returns the manifest
    (for the caller to write, last)."""
    root = Path(root)
    target = root / DATASET_ID
    start = time.monotonic()
    jobs, annotations = _plan(config)
    with staged(target) as tmp:
        folders = {str(Path(rel).parent) for rel, _ in jobs} | {str(Path(rel).parent) for rel in annotations}
        for folder in sorted(folders):
            (tmp / folder).mkdir(parents=True, exist_ok=True)
        digests = _render(jobs, tmp, config.image_size, workers)
        files = {}
        for rel, value in annotations.items():
            atomic_write_bytes(tmp / rel, _dump(value))
            files[rel] = sha256_file(tmp / rel)
        manifest = {
            "id": DATASET_ID,
            "clipctl_version": __version__,
            "generator_version": GENERATOR_VERSION,
            "sources": ["generated locally by clipctl"],
            "params": config.model_dump(),
            "files": files,
            "images": {"count": len(digests), "sha256": _images_digest(digests)},
            "counts": {
                "train": config.train_size,
                "val": config.eval_images,
                "test": config.eval_images,
                "zeroshot_val": config.zeroshot_val_per_class * len(CLASSNAMES),
                "zeroshot": config.zeroshot_per_class * len(CLASSNAMES),
                "classes": len(CLASSNAMES),
            },
            "splits": {name: split.path for name, split in SPLITS.items()},
            "size_bytes": sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()),
            "verified": True,
        }
    info(
        f"shapes: generated {len(digests)} images in {time.monotonic() - start:.1f} s at {target} "
        f"(seed {config.seed}, train {config.train_size}, {config.image_size} px)"
    )
    return manifest


def _render(jobs: list[tuple[str, Scene]], folder: Path, size: int, workers: int | None) -> list[tuple[str, str]]:
    """Render the images into `folder` in a process pool (same bytes for any number of workers); their digests."""
    workers = max(1, min(workers or os.cpu_count() or 1, 8))
    tasks = [(str(folder), size, chunk) for chunk in _chunks(jobs, 250)]
    digests: list[tuple[str, str]] = []
    with ProgressReporter("shapes", total=len(jobs), unit="img") as progress:
        if workers == 1:
            results: Iterator[list[tuple[str, str]]] = map(_render_chunk, tasks)
            for done in results:
                digests += done
                progress.update(len(done))
        else:
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            with multiprocessing.get_context(method).Pool(workers) as pool:
                for done in pool.imap_unordered(_render_chunk, tasks):
                    digests += done
                    progress.update(len(done))
    return digests


def _images_digest(digests: list[tuple[str, str]]) -> str:
    """Same construction as `tree_digest` over *.png, from hashes the workers already computed."""
    import hashlib

    total = hashlib.sha256()
    for rel, hexdigest in sorted(digests):
        total.update(rel.encode() + b"\0" + bytes.fromhex(hexdigest))
    return total.hexdigest()


def verify_shapes(root: Path) -> dict[str, Any]:
    """Re-hash every annotation file and every image against the manifest; DataError on any difference."""
    root = Path(root)
    manifest = read_manifest(root, DATASET_ID)
    if manifest is None:
        raise DataError(f"shapes: not generated under {root}; run `clipctl data fetch shapes`")
    _check_files(root, manifest)
    return manifest


def _check_files(root: Path, manifest: dict[str, Any]) -> None:
    target = Path(root) / DATASET_ID
    check_hashes(target, manifest["files"], DATASET_ID)
    digest, count = tree_digest(target, "*.png")
    want = manifest["images"]
    if count != want["count"] or digest != want["sha256"]:
        raise DataError(
            f"{target}: images differ from manifests/shapes.json ({count} files, digest {digest[:12]}; expected "
            f"{want['count']}, {want['sha256'][:12]}); run `clipctl data fetch shapes --force`"
        )


class ShapesPreparer(Preparer):
    """Generation from the options (no download); a copy made by another generator version counts as unknown."""

    def prepare(self, spec: DatasetSpec, root: Path, options: Any, *, force: bool) -> dict[str, Any]:
        return build_shapes(root, options)

    def verify(self, spec: DatasetSpec, root: Path, manifest: dict[str, Any]) -> None:
        _check_files(root, manifest)

    def made_with(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        params = manifest.get("params")
        return params if isinstance(params, dict) and manifest.get("generator_version") == GENERATOR_VERSION else None


register_dataset(
    DatasetSpec(
        id=DATASET_ID,
        role="all",
        description="synthetic benchmark, generated locally (64 classes, long tail, noisy captions)",
        licence="generated locally by clipctl (MIT, like clipctl itself)",
        folder=DATASET_ID,
        splits=SPLITS,
        default_split="train",
        preparer=ShapesPreparer(),
        options=ShapesConfig,
        recipe_keys={"train_size": "shapes_train_size", "image_size": "shapes_image_size", "seed": "shapes_seed"},
        made_on_use=True,
        stamped=False,  # same seed, same bytes: the manifest too
        benchmarks=(Benchmark("shapes", ("test", "zeroshot"), help="shapes test retrieval + zero-shot."),),
    )
)
