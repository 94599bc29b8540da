"""Files of Hugging Face dataset repos (the CC3M shards, the gated ImageNet copy) through `huggingface_hub`.

The hub client brings the pinned revision, its cache (`HF_HOME`/`HF_HUB_CACHE`, shared with every other
tool), the token (`HF_TOKEN` or `hf auth login`), `HF_ENDPOINT` for hub mirrors, resumable and locked
downloads. It does not check content hashes, so each file is then checked here: against the registry's
sha256/md5 when it has one, else against what the hub itself published for the file at that revision (its
ETag, which names the cache blob: the sha256 of an LFS file, the git blob id of a small file). A mismatch
moves the cached blob to `downloads/quarantine/` so it is never reused. `CLIPCTL_MIRROR` (a plain-URL copy)
bypasses the hub; see `clipctl.data.fetch`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clipctl.data.fetch import SourceUnavailable, quarantine
from clipctl.data.manifest import hash_file
from clipctl.data.records import DatasetSpec, RemoteFile
from clipctl.errors import DataError

PROBE_TIMEOUT_S = 3.0
_HEX = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def repo_path(spec: DatasetSpec, remote: RemoteFile) -> str:
    """The file's path in the hub repo: the part of its registry URL after `/resolve/<revision>/`."""
    marker = f"/resolve/{spec.hub_revision}/"
    return remote.url.split(marker, 1)[1] if marker in remote.url else remote.name


def _hub_error(spec: DatasetSpec, what: str, err: Exception, unreachable: str | None = None) -> DataError:
    """One line for what the hub client raised (its own messages span several lines)."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(err, "response", None), "status_code", None)
    where = f"{spec.hub_repo}@{spec.hub_revision[:12]}"
    if isinstance(err, GatedRepoError) or status in (401, 403):
        return DataError(
            f"{spec.id}: the hub answered {status or 'gated'} for {what} in {where}: access is gated or "
            f"denied; {spec.access_hint or 'accept its terms on the hub and set HF_TOKEN'}"
        )
    if isinstance(err, LocalEntryNotFoundError):  # before EntryNotFoundError: some versions derive it from that
        why = unreachable or ("HF_HUB_OFFLINE is set" if _offline() else f"the hub at {hub_endpoint()} is unreachable")
        return _unreachable_error(spec, what, why)
    if isinstance(err, (EntryNotFoundError, RevisionNotFoundError, RepositoryNotFoundError)):
        return SourceUnavailable(f"{spec.id}: {what} not found in {where} ({type(err).__name__})")
    if isinstance(err, HfHubHTTPError):
        return SourceUnavailable(
            f"{spec.id}: the hub failed on {what} ({status or type(err).__name__}); run the command again later"
        )
    return SourceUnavailable(
        f"{spec.id}: the hub client failed on {what} ({type(err).__name__}: "
        f"{str(err).splitlines()[0][:160] if str(err) else ''})"
    )


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    """The hub the client talks to: $HF_ENDPOINT (read by huggingface_hub at import), else its default."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def hub_unreachable(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be used now (HF_HUB_OFFLINE, or no answer from its endpoint within `timeout`), else
    None. Any HTTP answer counts as reachable: this asks whether the network gets there, not whether a file is
    there. One short request, so an offline machine is told in seconds rather than after the client's retries."""
    if _offline():
        return "HF_HUB_OFFLINE is set"
    import requests
    from huggingface_hub.utils import build_hf_headers

    endpoint = hub_endpoint()
    try:  # with the client's own headers (token, user agent), as its next request would be sent
        requests.head(endpoint, headers=build_hf_headers(), timeout=timeout, allow_redirects=False).close()
    except requests.RequestException as err:
        reason = "no answer within {timeout:g} s" if isinstance(err, requests.Timeout) else type(err).__name__
        return f"the hub at {endpoint} is unreachable ({reason.format(timeout=timeout)})"
    return None


def _unreachable_error(spec: DatasetSpec, what: str, why: str) -> DataError:
    """The one line for a hub that cannot be used: what to provide instead, then how to reach the hub."""
    instead = f"provide your own copy instead: {spec.local_copy}; or " if spec.local_copy else ""
    return DataError(
        f"{spec.id}: {what} is not in the hub cache and {why}; {instead}connect (unset HF_HUB_OFFLINE, or set "
        f"HF_ENDPOINT to a reachable hub mirror) and run the command again"
    )


@contextmanager
def _quiet_client() -> Iterator[None]:
    """The hub client's retry warnings and progress bars are kept off the screen: a failure is one line."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    logger = logging.getLogger("huggingface_hub")
    level, bars_off = logger.level, are_progress_bars_disabled()
    logger.setLevel(logging.ERROR)
    disable_progress_bars()
    try:
        yield
    finally:
        logger.setLevel(level)
        if not bars_off:
            enable_progress_bars()


def _call_hub(spec: DatasetSpec, what: str, call: Any, **kwargs: Any) -> Path:
    """The client's call, from its cache alone when the hub cannot be reached (no retries against a dead host)."""
    unreachable = None if _offline() else hub_unreachable()
    if unreachable is not None:
        kwargs["local_files_only"] = True
    try:
        with _quiet_client():
            return Path(call(spec.hub_repo, repo_type="dataset", revision=spec.hub_revision, **kwargs))
    except Exception as err:  # the hub client raises many types (HTTP, offline, auth, validation): all made one line
        raise _hub_error(spec, what, err, unreachable) from None


def hub_file(spec: DatasetSpec, remote: RemoteFile, root: Path) -> tuple[Path, dict[str, Any]]:
    """One file of the spec's hub repo at its pinned revision (cached), checked; (path, {"size", "sha256", ...})."""
    from huggingface_hub import hf_hub_download

    filename = repo_path(spec, remote)
    path = _call_hub(spec, filename, hf_hub_download, filename=filename)
    return path, check_hub_file(path, remote, spec, root)


def hub_snapshot(spec: DatasetSpec, remotes: list[RemoteFile], root: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Several files of the spec's hub repo in one `snapshot_download` (only those, by `allow_patterns`), checked;
    {registry name: (path, {"size", "sha256", ...})}."""
    from huggingface_hub import snapshot_download

    paths = {remote.name: repo_path(spec, remote) for remote in remotes}
    folder = _call_hub(spec, ", ".join(paths.values()), snapshot_download, allow_patterns=list(paths.values()))
    found = {}
    for remote in remotes:
        path = folder / paths[remote.name]
        if not path.is_file():
            raise SourceUnavailable(
                f"{spec.id}: {paths[remote.name]} is not in {spec.hub_repo}@{spec.hub_revision[:12]}"
            )
        found[remote.name] = (path, check_hub_file(path, remote, spec, root))
    return found


def _published(path: Path, remote: RemoteFile) -> list[tuple[str, str, str]]:
    """(algorithm, expected hex, who says so): the registry's hashes, else the hub's ETag that names the blob."""
    claims = [
        (algo, value.lower(), "the registry")
        for algo, value in (("sha256", remote.sha256), ("md5", remote.md5))
        if value
    ]
    if not claims:
        blob = Path(os.path.realpath(path)).name
        if _HEX.fullmatch(blob):
            claims.append(("sha256" if len(blob) == 64 else "git-blob", blob, "the hub"))
    return claims


def _git_blob_id(path: Path) -> str:
    """The id git (and so the hub) gives a small file: sha1 over "blob <size>\\0" + its bytes."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_hub_file(path: Path, remote: RemoteFile, spec: DatasetSpec, root: Path) -> dict[str, Any]:
    """Size and hash of a file from the hub cache against what was published for it; a mismatch quarantines the
    cached copy (so the next fetch downloads it again) and raises a one-line DataError."""
    claims = _published(path, remote)
    hashes = hash_file(path, sorted({"sha256", *(algo for algo, _, _ in claims if algo != "git-blob")}))
    result: dict[str, Any] = {"size": path.stat().st_size, **hashes}
    if remote.size is not None and result["size"] != remote.size:
        claims.insert(0, ("size", str(remote.size), "the registry"))
    for algo, want, who in claims:
        got = str(result["size"]) if algo == "size" else _git_blob_id(path) if algo == "git-blob" else hashes[algo]
        if got != want:
            moved = _quarantine_cached(path, root, remote.name)
            raise DataError(
                f"{remote.name}: {algo} mismatch against {who}: expected {want}, actual {got}; the hub's "
                f"copy was moved to {moved}; run `clipctl data fetch {spec.id}` again, or check "
                f"{spec.hub_repo}@{spec.hub_revision[:12]}"
            )
    if not claims:
        result["unverified"] = True
    return result


def _quarantine_cached(path: Path, root: Path, name: str) -> Path:
    """Move the cache blob behind `path` aside (as `name`) and drop the snapshot link to it."""
    blob = Path(os.path.realpath(path))
    moved = quarantine(blob, root / "downloads" / "quarantine", name)
    if path.is_symlink() or path.exists():
        path.unlink(missing_ok=True)
    return moved
