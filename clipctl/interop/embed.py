"""`clipctl embed`: L2-normalised features of one's own images or texts as a `.npy` matrix plus an index CSV.

The features are those `clipctl eval` computes (same transform, batch size, workers, precision and encoder call),
one row per image or text in the index's order. Large jobs are resumable: rows are written in parts of
`PART_ROWS` into a hidden `.NAME.npy.parts/` folder beside --out, and an interrupted run started again with the
same inputs, model and settings continues after the last complete part. The `.npy` and the `.csv` appear only when
every row is done (each written to a temporary file and renamed), and the parts folder is then removed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from clipctl.atomic import atomic_write, atomic_write_json, atomic_write_text
from clipctl.console import ProgressReporter, warn
from clipctl.errors import DataError, InterruptedRun, RunConflictError, UsageError
from clipctl.evaluate.checkpoint_eval import default_device
from clipctl.evaluate.encode import iter_image_features, iter_text_features, model_device
from clipctl.interop.bundle import Bundle, open_bundle
from clipctl.interop.images import ImageFiles, image_loader, list_images, readable_images

PART_ROWS = 4096


@dataclass
class EmbedResult:
    out: Path
    index: Path
    rows: int
    dim: int
    resumed: int  # rows an interrupted earlier run had already written
    seconds: float  # this run's encoding time, data loading included (what `clipctl eval` reports as images/s)

    @property
    def items_per_s(self) -> float:
        encoded = self.rows - self.resumed
        return encoded / self.seconds if self.seconds > 0 else float("inf")


def index_path(out: Path) -> Path:
    return out.with_suffix(".csv")


def check_out(out: str | Path) -> Path:
    """--out must name a new `.npy` file; its index CSV goes beside it and must be new too."""
    out = Path(out)
    if out.suffix != ".npy":
        raise UsageError(f"--out {out}: expected a .npy file name (the index is written beside it as {out.stem}.csv)")
    for path in (out, index_path(out)):
        if path.exists():
            raise RunConflictError(f"{path}: already exists; choose another --out or remove it first")
    return out


def precision_for(device: torch.device) -> str:
    """What `clipctl eval` encodes with: bf16 autocast on a CUDA device that has it, float32 elsewhere."""
    return "auto" if device.type == "cuda" else "no"


def embed(
    source: str | Path,
    out: str | Path,
    *,
    images: str | Path | None = None,
    texts: str | Path | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    device: torch.device | str | None = None,
    part_rows: int = PART_ROWS,
) -> EmbedResult:
    """Embed the images of a folder or glob, or the lines of a text file, with the model at `source` (run dir,
    checkpoint or export) into `out` (.npy) and its index (.csv); the inputs are checked before the model loads."""
    if (images is None) == (texts is None):
        raise UsageError("clipctl embed: give exactly one of --images DIR_OR_GLOB or --texts FILE")
    out = check_out(out)
    if images is not None:
        paths = readable_images(list_images(images))
        bundle = open_bundle(source, device or default_device())
        return embed_images(
            bundle, paths, out, batch_size=batch_size, num_workers=num_workers, progress=progress, part_rows=part_rows
        )
    lines = read_texts(Path(texts))  # type: ignore[arg-type]
    bundle = open_bundle(source, device or default_device())
    return embed_texts(bundle, lines, out, batch_size=batch_size, progress=progress, part_rows=part_rows)


def embed_images(
    bundle: Bundle,
    paths: list[Path],
    out: Path,
    *,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    part_rows: int = PART_ROWS,
) -> EmbedResult:
    """Embed `paths` into `out` (.npy) and its index (.csv: row, path), as `clipctl eval` encodes images."""
    device = model_device(bundle.model)
    batch_size = batch_size or bundle.batch_size
    workers = bundle.num_workers if num_workers is None else num_workers
    dataset = ImageFiles(paths, bundle.transform())

    def encode_from(start: int) -> Iterator[torch.Tensor]:
        loader = image_loader(Subset(dataset, range(start, len(dataset))), batch_size, workers, device)
        for _, features in iter_image_features(bundle.model, loader, device=device, precision=precision_for(device)):
            yield features

    rows = [[str(p)] for p in paths]
    job = _Job(bundle, "images", rows, batch_size, part_rows)
    return job.run(out, ["row", "path"], encode_from, progress)


def embed_texts(
    bundle: Bundle,
    lines: list[tuple[int, str]],
    out: Path,
    *,
    batch_size: int | None = None,
    progress: bool = True,
    part_rows: int = PART_ROWS,
) -> EmbedResult:
    """Embed (line number, text) pairs into `out` and its index (.csv: row, line, text as written); each text is
    cleaned first as `clipctl eval` cleans captions (the model's preprocessing record)."""
    device = model_device(bundle.model)
    batch_size = batch_size or bundle.batch_size
    clean = bundle.clean_text()
    texts = [clean(text) for _, text in lines]

    def encode_from(start: int) -> Iterator[torch.Tensor]:
        for _, features in iter_text_features(
            bundle.model,
            bundle.tokenizer,
            texts[start:],
            batch_size=batch_size,
            device=device,
            precision=precision_for(device),  # type: ignore[arg-type]
        ):
            yield features

    rows = [[str(number), text] for number, text in lines]
    job = _Job(bundle, "texts", rows, batch_size, part_rows)
    return job.run(out, ["row", "line", "text"], encode_from, progress)


def read_texts(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of each non-blank line of a UTF-8 file, without its line break."""
    try:
        content = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; give a UTF-8 text file with one text per line") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable as UTF-8 text ({err}); give one text per line") from None
    lines = [(number, line) for number, line in enumerate(content.splitlines(), start=1) if line.strip()]
    if not lines:
        raise DataError(f"{path}: no texts (every line is blank); give one text per line")
    return lines


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda handle: np.save(handle, array))


class _Job:
    """One embedding job: its identity (inputs, model, settings), its part files and their assembly."""

    def __init__(self, bundle: Bundle, kind: str, rows: list[list[str]], batch_size: int, part_rows: int) -> None:
        if part_rows < 1 or part_rows % batch_size:
            # whole batches per part: a resumed run then encodes the very batches an uninterrupted one would
            part_rows = max(1, part_rows // batch_size) * batch_size
        inputs = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
        device = model_device(bundle.model)
        self.identity = {
            "kind": kind,
            "inputs_sha256": inputs,
            "model": bundle.fingerprint(),
            "rows": len(rows),
            "dim": bundle.model_config.embed_dim,
            "batch_size": batch_size,
            "part_rows": part_rows,
            "device": device.type,
            "precision": precision_for(device),
        }
        self.kind, self.rows, self.part_rows, self.dim = kind, rows, part_rows, bundle.model_config.embed_dim

    def run(
        self, out: Path, header: list[str], encode_from: Callable[[int], Iterator[torch.Tensor]], progress: bool
    ) -> EmbedResult:
        parts = out.parent / f".{out.name}.parts"
        done = self._resume_point(parts)
        started = time.perf_counter()
        self._encode(parts, done, encode_from, progress)
        seconds = time.perf_counter() - started
        self._write_index(index_path(out), header)
        self._assemble(parts, out)
        shutil.rmtree(parts, ignore_errors=True)
        return EmbedResult(out, index_path(out), len(self.rows), self.dim, done, seconds)

    def _resume_point(self, parts: Path) -> int:
        """Rows already written by an interrupted run of this same job (0 for a new one)."""
        job_file = parts / "job.json"
        if parts.is_dir():
            try:
                saved = json.loads(job_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                saved = None
            if saved == self.identity:
                return self._complete_rows(parts)
            warn(f"{parts}: partial embeddings of another job (other inputs, model or settings); starting over")
            shutil.rmtree(parts)
        parts.mkdir(parents=True)
        atomic_write_json(job_file, self.identity)
        return 0

    def _complete_rows(self, parts: Path) -> int:
        """Rows in the run of readable parts from part 0 on (parts are written atomically; a damaged one, which only
        something outside clipctl can cause, is encoded again with everything after it)."""
        rows, k = 0, 0
        while rows < len(self.rows) and (path := self._part(parts, k)).is_file():
            try:
                rows += np.load(path, mmap_mode="r").shape[0]
            except (OSError, ValueError):
                break
            k += 1
        return rows

    def _part(self, parts: Path, k: int) -> Path:
        return parts / f"part-{k:06d}.npy"

    def _encode(
        self, parts: Path, done: int, encode_from: Callable[[int], Iterator[torch.Tensor]], progress: bool
    ) -> None:
        """Encode rows `done`.. and write them in parts; an interrupt keeps every complete part for a resume."""
        total = len(self.rows)
        unit = "img" if self.kind == "images" else "txt"  # the units of `clipctl eval`'s bars
        reporter = ProgressReporter(f"embedding {self.kind}", total, unit) if progress else None
        if reporter and done:
            reporter.update(done)
        pending: list[np.ndarray] = []
        written, k = done, done // self.part_rows
        try:
            for features in encode_from(done):
                pending.append(features.cpu().numpy().astype(np.float32, copy=False))
                if reporter:
                    reporter.update(features.shape[0])
                while sum(len(a) for a in pending) >= self.part_rows or (
                    pending and written + sum(len(a) for a in pending) == total
                ):
                    block = np.concatenate(pending)
                    size = min(self.part_rows, len(block))
                    _save_npy(self._part(parts, k), block[:size])
                    pending = [block[size:]] if size < len(block) else []
                    written, k = written + size, k + 1
        except KeyboardInterrupt:
            raise InterruptedRun(
                f"embedding interrupted after {written} of {total} {self.kind}; run the same command again to resume"
            ) from None
        finally:
            if reporter:
                reporter.close()
        if written != total:
            raise DataError(f"encoded {written} of {total} {self.kind}: the input changed while it was read")

    def _write_index(self, path: Path, header: list[str]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([i, *row] for i, row in enumerate(self.rows))
        atomic_write_text(path, buffer.getvalue())

    def _assemble(self, parts: Path, out: Path) -> None:
        """The parts as one float32 (rows, dim) .npy, written beside `out` and renamed onto it."""
        tmp = out.parent / f".{out.name}.assemble.tmp"
        matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(self.rows), self.dim))
        try:
            row, k = 0, 0
            while row < len(self.rows):
                part = np.load(self._part(parts, k))
                matrix[row : row + len(part)] = part
                row, k = row + len(part), k + 1
            matrix.flush()
            del matrix
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
