"""What `clipctl data fetch|verify|ls` and a training run do with the dataset records, the same for every dataset.

The options a copy on disk was made with are its identity. `fetch_dataset` only verifies a present copy unless
you name other options (or `--force`); the options you do not name keep the present copy's values, else the
defaults. A run makes a dataset that is made on use (`shapes`) when it is absent, and refuses one present with
other options than its recipe asks for, saying how to get either: it never replaces data on its own. Making a
dataset takes turns with other makers and never happens under a run that reads it (`clipctl.data.lock`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clipctl import __version__
from clipctl.console import info
from clipctl.data.cc3m import pairs_json_subset
from clipctl.data.lock import DatasetLease, one_maker, replacing
from clipctl.data.manifest import read_manifest, write_manifest
from clipctl.data.records import DatasetOptions, DatasetSpec
from clipctl.data.registry import get_spec, parse_ref, records
from clipctl.errors import DataError, UsageError


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _check_option_names(spec: DatasetSpec, names: Iterable[str]) -> None:
    """An option the dataset does not have is a UsageError naming the datasets that do."""
    for name in names:
        if name not in spec.options.model_fields:
            owners = [s.id for s in records() if name in s.options.model_fields]
            where = f"only for `clipctl data fetch {'`, `'.join(owners)}`" if owners else "no dataset has it"
            own = ", ".join(flag(o) for o in spec.options.model_fields) or "none"
            raise UsageError(f"{flag(name)}: not an option of {spec.id} ({where}); its options: {own}")


def _describe(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items()) or "its default options"


def _differences(made: dict[str, Any] | None, wanted: DatasetOptions) -> list[str]:
    """The options whose recorded value differs from the wanted one (all of them when the record is unknown)."""
    values = wanted.model_dump()
    if made is None:
        return list(values)
    return [k for k in made if k in values and made[k] != values[k]]


def fetch_dataset(
    dataset_id: str, root: Path, *, options: Mapping[str, Any] | None = None, force: bool = False
) -> tuple[str, dict[str, Any]]:
    """Make `dataset_id` present under `root`; returns ("generated"|"fetched"|"verified", manifest).

    `options` (values as typed, validated by the dataset's options model) are the ones asked for; the others keep
    the present copy's values, else the defaults. A present copy is verified, not re-made, unless `force` or
    other options are asked for.
    """
    spec, root, asked = get_spec(dataset_id), Path(root), dict(options or {})
    _check_option_names(spec, asked)
    info(f"{spec.id}: licence: {spec.licence}")
    manifest = read_manifest(root, spec.id)
    made = spec.preparer.made_with(manifest) if manifest is not None else None
    present = {k: v for k, v in (made or {}).items() if k in spec.options.model_fields}
    wanted = spec.parse_options({**present, **asked}, f"clipctl data fetch {spec.id}")
    if manifest is not None and not force and not (asked and _differences(made, wanted)):
        return "verified", verify_dataset(spec.id, root)
    if manifest is not None and not force:
        changed = {k: getattr(wanted, k) for k in _differences(made, wanted)}
        info(f"{spec.id}: present under {root} with other options; making it again with {_describe(changed)}")
    return make_dataset(spec, root, wanted, force=force, keep=lambda m: not force and not _differences(m, wanted))


def make_dataset(
    spec: DatasetSpec,
    root: Path,
    options: DatasetOptions,
    *,
    force: bool,
    keep: Callable[[dict[str, Any] | None], bool],
) -> tuple[str, dict[str, Any]]:
    """Prepare `spec` with `options` and write its manifest last, taking turns with other makers and never under a
    run that reads it; a copy another maker finished while this one waited is kept when `keep(its made_with)`."""
    with one_maker(root, spec.id):  # a second maker started together waits, then looks again
        manifest = read_manifest(root, spec.id)
        if manifest is not None and keep(spec.preparer.made_with(manifest)):
            return "verified", verify_dataset(spec.id, root)
        what = f"making it with {_describe(_non_default(options))}"
        with replacing(root, spec.id, what):
            manifest = spec.preparer.prepare(spec, root, options, force=force)
            _note_unverified_downloads(manifest)
            if spec.stamped:
                stamp = now_iso()
                manifest.update(
                    {"id": spec.id, "clipctl_version": __version__, "fetched_at": stamp, "verified_at": stamp}
                )
            write_manifest(root, spec.id, manifest)
    return ("generated" if spec.made_on_use else "fetched"), manifest


def _non_default(options: DatasetOptions) -> dict[str, Any]:
    fields = type(options).model_fields
    return {k: v for k, v in options.model_dump().items() if fields[k].is_required() or fields[k].default != v}


def verify_dataset(dataset_id: str, root: Path) -> dict[str, Any]:
    """Re-hash what the manifest records (annotations, images, counts); DataError (exit 3) on any difference."""
    spec, root = get_spec(dataset_id), Path(root)
    manifest = read_manifest(root, spec.id)
    if manifest is None:
        raise DataError(f"{spec.id}: not present under {root}; run `clipctl data fetch {spec.id}`")
    spec.preparer.verify(spec, root, manifest)
    if spec.stamped:  # an unstamped manifest stays byte-identical across generations
        manifest["verified_at"] = now_iso()
        write_manifest(root, spec.id, manifest)
    return manifest


def _note_unverified_downloads(manifest: dict[str, Any]) -> None:
    """Record downloaded files that had no published checksum (a mirror's copy, a hub file without a hash)."""
    downloads = manifest.get("downloads") or {}
    names = sorted(name for name, result in downloads.items() if isinstance(result, dict) and result.get("unverified"))
    if names and "unverified" not in manifest:
        manifest["unverified"] = {
            "files": len(names),
            "why": f"no published checksum for {', '.join(names[:3])}"
            f"{', ...' if len(names) > 3 else ''}; checked for what they claim to be, sha256 "
            f"recorded at fetch",
        }


def unverified_note(dataset_id: str, manifest: dict[str, Any]) -> str | None:
    """The line `data fetch|verify` print when part of a dataset has no published checksum, else None."""
    unverified = manifest.get("unverified")
    if not isinstance(unverified, dict):
        return None
    what = ", ".join(f"{v} {k}" for k, v in unverified.items() if isinstance(v, int))
    return f"{dataset_id}: unverified: {what or 'some files'}: {unverified.get('why', 'no published checksum')}"


def dataset_status(root: Path) -> list[dict[str, Any]]:
    """One row per record: present, size on disk, last verification, the options it was made with (`data ls`)."""
    rows = []
    for spec in records():
        try:
            manifest = read_manifest(Path(root), spec.id)
        except DataError:
            manifest = {"verified": False, "corrupt": True}
        present = manifest is not None and not manifest.get("corrupt")
        rows.append(
            {
                "id": spec.id,
                "role": spec.role,
                "present": present,
                "size_bytes": (manifest or {}).get("size_bytes"),
                "verified": (manifest or {}).get("verified_at") or bool((manifest or {}).get("verified")),
                "unverified": (manifest or {}).get("unverified"),
                "options": spec.preparer.made_with(manifest) if present and manifest else None,
                "description": spec.description,
                "licence": spec.licence,
            }
        )
    return rows


# ------------------------------------------------------------------------------------------ a run's datasets


def _registered(refs: Iterable[str]) -> dict[str, DatasetSpec]:
    return {ref.spec.id: ref.spec for ref in map(parse_ref, refs) if ref.spec is not None}


def run_options(spec: DatasetSpec, settings: Mapping[str, Any]) -> DatasetOptions:
    """The options a recipe's `[data]` table (`settings`) asks of `spec`; an unset key takes the option's default."""
    values = {opt: settings[key] for opt, key in spec.recipe_keys.items() if settings.get(key) is not None}
    return spec.parse_options(values, "recipe [data]")


def ensure_for_run(refs: Iterable[str], root: Path, settings: Mapping[str, Any]) -> DatasetLease:
    """Make each absent made-on-use dataset among `refs` (real ones must be fetched), then hold every registered one
    for the run's life so nothing replaces it under the run; one present with other options is refused
    (`check_for_run`)."""
    specs = _registered(refs)
    for spec in specs.values():
        if spec.made_on_use and read_manifest(root, spec.id) is None:
            make_dataset(spec, root, run_options(spec, settings), force=False, keep=lambda made: True)
    lease = DatasetLease(root, specs)
    try:
        check_for_run(refs, root, settings)
    except BaseException:
        lease.release()
        raise
    return lease


def check_for_run(refs: Iterable[str], root: Path, settings: Mapping[str, Any]) -> None:
    """DataError (exit 3) when a registered dataset among `refs` is present with other values of the options a
    recipe sets (`recipe_keys`) than `settings` ask for, naming the keys that would use it and the fetch that would
    make what the recipe asks for. Options a recipe cannot set are the fetch's to choose."""
    for spec in _registered(refs).values():
        manifest = read_manifest(root, spec.id)
        if manifest is None:
            continue  # resolving it names the fetch
        made, wanted = spec.preparer.made_with(manifest), run_options(spec, settings)
        different = [k for k in _differences(made, wanted) if k in spec.recipe_keys]
        if different:
            raise DataError(_conflict(spec, root, made, wanted, different))


def _conflict(
    spec: DatasetSpec, root: Path, made: dict[str, Any] | None, wanted: DatasetOptions, keys: list[str]
) -> str:
    """The one line of `check_for_run`: what is there, what the run asks, and the ways out."""
    recipe = spec.recipe_keys
    had = _describe({k: made[k] for k in keys}) if made is not None else "options this version does not know"
    asks = ", ".join(f"data.{recipe[k]} = {getattr(wanted, k)}" for k in keys)
    use = f"set {', '.join(f'data.{recipe[k]} = {made[k]}' for k in keys)} to use it, or " if made is not None else ""
    flags = " ".join(f"{flag(k)} {getattr(wanted, k)}" for k in keys)
    return (
        f"{spec.id} under {root} was made with {had}, but this run asks for {asks}: {use}run `clipctl data fetch "
        f"{spec.id} --force {flags}` to make it again, or use another data root (CLIPCTL_DATA or data.root)"
    )


def training_subset(ref: str, root: Path) -> dict[str, Any] | None:
    """Which subset of its source a training reference is: the one its record's manifest states (CC3M), or the one
    computed from a pairs JSON path; None for anything else."""
    parsed = parse_ref(ref)
    if parsed.spec is not None:
        return (read_manifest(root, parsed.spec.id) or {}).get("subset")
    return pairs_json_subset(parsed.path)
