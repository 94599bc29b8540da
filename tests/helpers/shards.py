"""WebDataset shards for the shard-source and streaming tests, written as img2dataset writes them: `00000.tar` with
`.jpg`/`.png` + `.txt` + `.json` (an integer `key`) per sample, optionally with `00000_stats.json` beside it."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")


def png(seed: int, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256)).save(buffer, "PNG")
    return buffer.getvalue()


def caption(key: int) -> str:
    return f"a {COLOURS[key % len(COLOURS)]} square number {key}"


def write_shards(
    folder: Path, counts: list[int], *, first_key: int = 0, stats: bool = False, gz: bool = False, name: str = "{:05d}"
) -> list[Path]:
    """Shards of `counts[i]` samples each with keys first_key.. in order; returns their paths."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    paths, key = [], first_key
    for i, count in enumerate(counts):
        path = folder / (name.format(i) + (".tar.gz" if gz else ".tar"))
        with wds.TarWriter(str(path), encoder=False, compress=gz) as sink:
            for _ in range(count):
                sink.write(
                    {
                        "__key__": f"{key:09d}",
                        "png": png(key),
                        "txt": caption(key).encode(),
                        "json": json.dumps({"key": key}).encode(),
                    }
                )
                key += 1
        if stats:
            stem = path.name.split(".")[0]
            (folder / f"{stem}_stats.json").write_text(json.dumps({"count": count, "successes": count}))
        paths.append(path)
    return paths


def shapes_shards(shapes: Path, folder: Path, per_shard: int) -> list[Path]:
    """The tiny shapes training pairs (`helpers.trainkit`) as shards of `per_shard` samples, in pair order, with
    `_stats.json` beside each (as img2dataset writes them)."""
    import webdataset as wds

    pairs = json.loads((shapes / "train.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(pairs), per_shard):
        path = folder / f"{start // per_shard:05d}.tar"
        chunk = pairs[start : start + per_shard]
        with wds.TarWriter(str(path), encoder=False) as sink:
            for key, pair in enumerate(chunk, start):
                sample = {"png": (shapes / pair["image"]).read_bytes(), "txt": pair["caption"].encode()}
                sink.write({"__key__": f"{key:09d}", **sample, "json": json.dumps({"key": key}).encode()})
        (folder / f"{path.stem}_stats.json").write_text(json.dumps({"successes": len(chunk)}))
        paths.append(path)
    return paths


def clear_memory_fs() -> None:
    """Empty fsspec's process-wide memory filesystem (a test's bucket must not leak into the next test)."""
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.store.clear()
    memory.pseudo_dirs[:] = [""]
