"""What `clipctl eval` evaluates, from the dataset records.

A record's benchmarks are the shorthands (`--coco`, `--imagenet`, `--imagenet-full`, `--shapes`, and any a new
record declares). `--dataset REF` takes any reference: a registered id alone is its record's first benchmark (the
same row as its shorthand; the default split when it declares none), "ID:split" is that one split, and a path is a
retrieval JSON or a class folder, its layout picked by the readers. Everything is located before any encoding, so
a missing dataset fails first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from clipctl.data.records import EVAL_ROLES, Benchmark, DatasetSpec
from clipctl.data.registry import DataRef, Located, benchmarks, locate, parse_ref
from clipctl.errors import DataError, UsageError


@dataclass(frozen=True)
class EvalSet:
    """One result row: its name (also `eval/<name>.json`), its retrieval and zero-shot sets (either may be absent),
    a note for the line under the table, and whether it may enter the `combined` objective."""

    name: str
    retrieval: Located | None
    zeroshot: Located | None
    note: str = ""
    reported: bool = True
    stem: str = ""  # of its eval/<stem>.json before `file_names` makes it unique (default: the name)


def shorthand_flags() -> dict[str, str]:
    """`clipctl eval --FLAG` -> its help, from every record's benchmarks."""
    return {flag: benchmark.help for flag, (_, benchmark) in benchmarks().items()}


def notes() -> dict[str, str]:
    """Row name -> the line said under the table about it (the benchmarks' notes)."""
    return {flag: b.note for flag, (_, b) in benchmarks().items() if b.note}


def _from_splits(name: str, ref: DataRef, splits: Sequence[str], root: Path, benchmark: Benchmark | None) -> EvalSet:
    sets: dict[str, Located] = {}
    for split in splits:
        located = locate(ref, root, split)
        if located.role not in EVAL_ROLES:
            raise UsageError(
                f"{ref.text}: training pairs, not a retrieval or zero-shot set; name one of its evaluation "
                f"splits ({_eval_splits(ref.spec)}) or another dataset"
            )
        sets[located.role] = located
    note, reported = (benchmark.note, benchmark.reported) if benchmark else ("", True)
    return EvalSet(name, sets.get("retrieval"), sets.get("classification"), note, reported)


def _eval_splits(spec: DatasetSpec | None) -> str:
    names = [s for s, split in (spec.splits if spec else {}).items() if split.role in EVAL_ROLES]
    return ", ".join(names) or "it has none"


def _from_ref(text: str, root: Path) -> EvalSet:
    ref = parse_ref(text)
    if ref.spec is None:
        located = locate(ref, root)
        from clipctl.data.datasets import reader_for  # torch: only for a path that exists

        role = reader_for(located.path, EVAL_ROLES, what="--dataset").role
        retrieval, zeroshot = (located, None) if role == "retrieval" else (None, located)
        return EvalSet(ref.text, retrieval, zeroshot, stem=ref.path.stem)
    if ref.split:
        return _from_splits(ref.text, ref, [ref.split], root, None)
    if ref.spec.benchmarks:
        benchmark = ref.spec.benchmarks[0]
        return _from_splits(benchmark.flag, ref, benchmark.splits, root, benchmark)
    return _from_splits(ref.spec.id, ref, [ref.spec.default_split], root, None)


def plan(flags: Sequence[str], refs: Sequence[str], root: Path) -> list[EvalSet]:
    """The result rows of `clipctl eval --FLAG ... --dataset REF ...`: the shorthands in the table's order, then
    the references in the order given; a row asked for twice is evaluated once."""
    table = benchmarks()
    unknown = [f for f in flags if f not in table]
    if unknown:
        raise UsageError(f"--{unknown[0]}: not a benchmark; choose from {', '.join('--' + f for f in table)}")
    rows: dict[str, EvalSet] = {}
    missing: list[str] = []
    for flag, (spec, benchmark) in table.items():
        if flag in flags:
            with _collected(missing):
                rows[flag] = _from_splits(flag, DataRef(spec.id, spec), benchmark.splits, root, benchmark)
    for text in refs:
        with _collected(missing):
            row = _from_ref(text, root)
            rows.setdefault(row.name, row)
    if missing:
        raise DataError(missing[0] if len(missing) == 1 else f"{len(missing)} datasets missing: " + " | ".join(missing))
    return list(rows.values())


@contextmanager
def _collected(missing: list[str]) -> Iterator[None]:
    """Every missing dataset goes into one message: a user fetches them all in one round trip."""
    try:
        yield
    except DataError as err:
        missing.append(str(err))


def check_request(flags: Sequence[str], refs: Sequence[str]) -> None:
    """An eval needs at least one benchmark or dataset."""
    if not flags and not refs:
        choices = ", ".join(f"--{flag}" for flag in shorthand_flags())
        raise UsageError(f"clipctl eval: choose at least one of {choices} or --dataset ID_OR_PATH[:split]")


def combined_pair(rows: Sequence[EvalSet]) -> tuple[str, str] | None:
    """(retrieval row, zero-shot row) whose TR@1, IR@1 and ACC@1 make the `combined` objective: the first reported
    row with only a retrieval set and the first with only a zero-shot set (`--coco --imagenet`), else None."""
    retrieval = next((r.name for r in rows if r.reported and r.retrieval and not r.zeroshot), None)
    zeroshot = next((r.name for r in rows if r.reported and r.zeroshot and not r.retrieval), None)
    return (retrieval, zeroshot) if retrieval and zeroshot else None


def file_names(rows: Sequence[EvalSet]) -> dict[str, str]:
    """Row name -> the stem of its `eval/<stem>.json`: a shorthand's or an id's name, a path's file or folder name
    (without its suffix), made file-safe and unique among `rows`."""
    stems: dict[str, str] = {}
    for row in rows:
        base = "".join(c if c.isalnum() or c in "-_." else "_" for c in row.stem or row.name) or "dataset"
        stem, n = base, 1
        while stem in stems.values():
            n += 1
            stem = f"{base}-{n}"
        stems[row.name] = stem
    return stems
