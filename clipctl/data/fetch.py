"""Downloads, for the preparers of real datasets (`clipctl.data.operations` runs `data fetch|verify|ls`).

A download goes to `downloads/<file>.part`, resumes with HTTP Range, follows redirects, retries transient
failures (5xx, 429, dropped connections, truncated bodies) with exponential backoff, is verified by size
and hash, and only then is renamed into place. A wrong hash moves the file to `downloads/quarantine/`.
401/403 explains what access the user must provide; an unreachable host says so in one line.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests
import urllib3
from PIL import Image

from clipctl import __version__
from clipctl.console import ProgressReporter, info, warn
from clipctl.data.localfiles import regular_file_inside
from clipctl.data.manifest import hash_file
from clipctl.data.records import RemoteFile
from clipctl.errors import DataError

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


@dataclass
class FetchPolicy:
    """Retry and timeout knobs (tests shrink the backoff)."""

    retries: int = 5
    connect_retries: int = 2  # a host that never answered: fail fast (no network, wrong mirror)
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    connect_timeout_s: float = 15.0
    read_timeout_s: float = 60.0
    chunk_bytes: int = 1 << 20


POLICY = FetchPolicy()


class SourceUnavailable(DataError):
    """The source does not have the file (404/410) or kept failing: another source may still work."""


def http_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = f"clipctl/{__version__}"
    return session


def _short_reason(err: Exception) -> str:
    text = str(err)
    match = re.search(r"\[Errno -?\d+\][^'\")]*", text) or re.search(
        r"(Name or service not known|Temporary failure in name resolution"
        r"|timed out|Connection refused|Connection reset)",
        text,
    )
    return match.group(0).strip() if match else type(err).__name__


def _expected_hashes(expected: RemoteFile) -> dict[str, str]:
    return {k: v for k, v in (("md5", expected.md5), ("sha256", expected.sha256)) if v}


def quarantine(path: Path, folder: Path | None = None, name: str | None = None) -> Path:
    """Move a file that failed verification out of the way (kept for inspection, never reused), into `folder`
    (default: `quarantine/` beside it), as `name` (default: its own name)."""
    folder = folder or (path.parent / "quarantine" if path.parent.name != "quarantine" else path.parent)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name or path.name.removesuffix(".part"))
    if target.exists():
        target = folder / f"{target.name}.{int(time.time())}"
    path.replace(target)
    return target


def verify_file(path: Path, expected: RemoteFile, dataset_id: str, move_bad: bool = True) -> dict[str, Any]:
    """Size and hashes of `path` against the registry; a mismatch raises, after quarantining the file
    when `move_bad` (files the user keeps elsewhere are never moved)."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        where = f"moved to {quarantine(path)}" if move_bad else f"left at {path}"
        raise DataError(
            f"{expected.name}: size mismatch: expected {expected.size} bytes, actual {size}; {where}; "
            f"fetch it again (`clipctl data fetch {dataset_id}`)"
        )
    hashes = hash_file(path, sorted({"sha256", *_expected_hashes(expected)}))
    for algo, want in _expected_hashes(expected).items():
        if hashes[algo] != want.lower():
            where = f"moved to {quarantine(path)}" if move_bad else f"left at {path}"
            raise DataError(
                f"{expected.name}: {algo} mismatch: expected {want}, actual {hashes[algo]}; {where}; "
                f"fetch it again (`clipctl data fetch {dataset_id}`) or check its source {expected.url}"
            )
    return {"size": size, **hashes}


def content_problem(path: Path, name: str, content_type: str = "") -> str | None:
    """Why a file fetched without a known hash is not what its name claims (None when it looks right).

    Why: without a published checksum, an HTML error page or a body cut short without Content-Length would
    otherwise be stored as the file. Image files must decode completely; other files must not be HTML pages.
    """
    html = content_type.split(";")[0].strip().lower() == "text/html"
    if path.stat().st_size == 0:
        return "an empty body"
    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
        try:
            with Image.open(path) as img:
                img.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            what = "an HTML page" if html or _looks_like_html(path) else f"not a decodable image ({err})"
            return what[:200]
        return None
    if Path(name).suffix.lower() not in (".html", ".htm") and (html or _looks_like_html(path)):
        return "an HTML page"
    return None


def _looks_like_html(path: Path) -> bool:
    with open(path, "rb") as handle:
        start = handle.read(512).lstrip().lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


def download(
    url: str,
    dest: Path,
    expected: RemoteFile,
    *,
    dataset_id: str,
    access_hint: str = "",
    headers: dict[str, str] | None = None,
    policy: FetchPolicy | None = None,
    session: requests.Session | None = None,
    progress: bool = True,
    quarantine_dir: Path | None = None,
) -> dict[str, Any]:
    """Fetch `url` to `dest` (resumable, retried, verified, atomic); returns {"size", "sha256", ...}.

    A file without a known hash is checked for what it claims to be (`content_problem`; refetched on
    a failure, quarantined and refused when it keeps failing) and returned with "unverified": True.
    An existing `dest` that verifies is kept as is (a user may place files there by hand). `progress=False`
    silences the per-file progress display (many small files share one display instead).
    """
    policy = policy or POLICY
    dest.parent.mkdir(parents=True, exist_ok=True)
    unverified = not _expected_hashes(expected)
    if os.path.lexists(dest):
        regular_file_inside(dest, dest.parent)  # a file placed by hand: never a FIFO or a link out of its folder
        try:
            if unverified and (problem := content_problem(dest, expected.name)):
                raise DataError(f"{dest}: {problem}")
            return {**verify_file(dest, expected, dataset_id), **({"unverified": True} if unverified else {})}
        except DataError as err:
            warn(f"{err}; downloading it again")
            dest.unlink(missing_ok=True)
    part = dest.with_name(dest.name + ".part")
    session = session or http_session()
    tries = policy.retries + 1 if unverified else 1
    for attempt in range(1, tries + 1):
        seen: dict[str, str] = {}
        _download_part(url, part, expected, dataset_id, access_hint, headers, policy, session, progress, seen)
        problem = content_problem(part, expected.name, seen.get("content_type", "")) if unverified else None
        if problem is None:
            break
        if attempt == tries:
            where = quarantine(part, quarantine_dir)
            raise SourceUnavailable(
                f"{expected.name}: {urlparse(url).netloc} sent {problem} (no published checksum to "
                f"check it against) {tries} times; refused and moved to {where}"
            )
        part.unlink(missing_ok=True)
        info(f"{expected.name}: the server sent {problem}; fetching it again (try {attempt + 1})")
        time.sleep(min(policy.max_backoff_s, policy.backoff_s * 2 ** (attempt - 1)))
    result = verify_file(part, expected, dataset_id)
    part.replace(dest)
    return {**result, "unverified": True} if unverified else result


def _download_part(
    url: str,
    part: Path,
    expected: RemoteFile,
    dataset_id: str,
    access_hint: str,
    headers: dict[str, str] | None,
    policy: FetchPolicy,
    session: requests.Session,
    progress: bool,
    seen: dict[str, str],
) -> None:
    """Bring `part` to the complete body: resumed, retried with backoff; raises when it cannot."""
    host = urlparse(url).netloc or url
    attempt, last_error, got_response = 0, "", False
    while True:
        offset = _usable_part(part, expected)
        if expected.size is not None and offset == expected.size:
            break
        try:
            if _fetch_once(
                session, url, part, offset, expected, headers or {}, policy, dataset_id, access_hint, progress, seen
            ):
                break
            got_response = True
            last_error = f"the body ended early at {part.stat().st_size if part.exists() else 0} bytes"
        except _Retry as retry:
            if retry.restart:  # a stale .part, now deleted: start over at once, not a failed try
                info(f"{expected.name}: {retry.reason}")
                continue
            got_response = got_response or retry.responded
            last_error = retry.reason
            if retry.no_network and not got_response:
                raise DataError(
                    f"{dataset_id}: cannot reach {host} ({retry.reason}): no network? check the connection "
                    f"or set CLIPCTL_MIRROR to a reachable mirror"
                ) from None
        attempt += 1
        if attempt > (policy.retries if got_response else min(policy.retries, policy.connect_retries)):
            have = part.stat().st_size if part.exists() else 0
            if not got_response:
                raise DataError(
                    f"{dataset_id}: cannot reach {host} ({last_error}) after {attempt} tries: no network? "
                    f"check the connection or set CLIPCTL_MIRROR to a reachable mirror"
                )
            raise SourceUnavailable(
                f"{expected.name}: download from {host} failed after {attempt} tries ({last_error}); "
                f"{have} bytes kept in {part}; run the command again to resume"
            )
        delay = min(policy.max_backoff_s, policy.backoff_s * 2 ** (attempt - 1))
        info(f"{expected.name}: {last_error}; retrying in {delay:.1f} s (try {attempt + 1})")
        time.sleep(delay)


def _usable_part(part: Path, expected: RemoteFile) -> int:
    """The bytes of `part` to resume from; a `.part` longer than the file (left by another version of it) is
    deleted, so the download starts over instead of failing verification."""
    offset = part.stat().st_size if part.exists() else 0
    if expected.size is not None and offset > expected.size:
        info(f"{expected.name}: {part} is longer than the file ({offset} > {expected.size} bytes); starting over")
        part.unlink()
        return 0
    return offset


class _Retry(Exception):
    """A failed request to try again; `restart`: the `.part` was stale and is gone, so the next request is a
    fresh start that costs no try."""

    def __init__(self, reason: str, responded: bool, no_network: bool = False, restart: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.responded, self.no_network, self.restart = reason, responded, no_network, restart


# Over 60 lines: one request's whole protocol (range, status, length, body, checksum) in one place, so every
# early exit is seen together.
def _fetch_once(
    session: requests.Session,
    url: str,
    part: Path,
    offset: int,
    expected: RemoteFile,
    headers: dict[str, str],
    policy: FetchPolicy,
    dataset_id: str,
    access_hint: str,
    show: bool,
    seen: dict[str, str],
) -> bool:
    """One request; True when the body arrived complete, False when it ended early (resume), _Retry otherwise."""
    request_headers = {"Accept-Encoding": "identity", **headers}  # byte offsets must be file offsets
    if offset:
        request_headers["Range"] = f"bytes={offset}-"
    try:
        response = session.get(
            url,
            headers=request_headers,
            stream=True,
            allow_redirects=True,
            timeout=(policy.connect_timeout_s, policy.read_timeout_s),
        )
    except requests.exceptions.ConnectionError as err:
        reason = _short_reason(err)
        raise _Retry(reason, responded=False, no_network="name" in reason.lower() or "Errno -" in reason) from None
    except requests.exceptions.Timeout as err:
        raise _Retry(f"timed out ({_short_reason(err)})", responded=False) from None
    except requests.exceptions.TooManyRedirects:
        raise SourceUnavailable(
            f"{expected.name}: {url} redirects in a loop (over {session.max_redirects} redirects); nothing was "
            f"written to {_final(part)}; {_SOURCE_FIX}"
        ) from None
    except (
        requests.exceptions.InvalidSchema,
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
    ) as err:
        raise SourceUnavailable(
            f"{expected.name}: {url} leads to {_named_url(err)}, not an http(s) URL: refused; nothing was written "
            f"to {_final(part)}; {_SOURCE_FIX}"
        ) from None
    with response:
        status = response.status_code
        if status in (401, 403):
            raise DataError(
                f"{dataset_id}: {urlparse(url).netloc} answered {status} for {expected.name}: access is "
                f"gated or denied; {access_hint or 'download the file yourself into <data root>/downloads/'}"
            )
        if status in (404, 410):
            raise SourceUnavailable(
                f"{expected.name}: not found at {url} ({status}); "
                f"{access_hint or 'set CLIPCTL_MIRROR or place the file in <data root>/downloads/'}"
            )
        if status == 416 and offset:  # our .part is already the whole file (size unknown) or is stale
            if expected.size is None and _range_total(response.headers.get("Content-Range", "")) == offset:
                return True
            part.unlink(missing_ok=True)
            raise _Retry(
                f"the server has no byte {offset} (HTTP 416): the .part was stale; starting over",
                responded=True,
                restart=True,
            )
        if status in _RETRY_STATUS or status >= 500:
            raise _Retry(f"HTTP {status}", responded=True)
        if status not in (200, 206):
            raise DataError(f"{expected.name}: unexpected HTTP {status} from {url}")
        if status == 206 and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            part.unlink(missing_ok=True)
            raise _Retry("the server answered a different range; restarting", responded=True)
        start = offset if status == 206 else 0
        seen["content_type"] = response.headers.get("Content-Type", "")
        length = response.headers.get("Content-Length")
        total = expected.size or (start + int(length) if length and length.isdigit() else None)
        received = start
        read = getattr(response.raw, "read1", None) or response.raw.read  # read1 keeps the bytes before a cut
        try:
            with open(part, "ab" if start else "wb") as handle, _progress(expected.name, total, show) as progress:
                progress.update(completed=start)
                while True:
                    try:
                        chunk = read(policy.chunk_bytes)
                    except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as err:
                        raise _Retry(
                            f"the connection dropped at {received} bytes ({_short_reason(err)})", responded=True
                        ) from None
                    if not chunk:
                        break
                    handle.write(chunk)
                    received += len(chunk)
                    progress.update(completed=received)
        except OSError as err:  # the local side: disk full, permissions
            raise DataError(
                f"{part}: cannot write ({err.strerror or err}); free some space or choose another data root "
                f"(CLIPCTL_DATA)"
            ) from None
        if length and length.isdigit() and received < start + int(length):
            return False
        return expected.size is None or received >= expected.size


_SOURCE_FIX = "the source is misconfigured: set CLIPCTL_MIRROR to a working mirror or place the file there yourself"


def _final(part: Path) -> Path:
    return part.with_name(part.name.removesuffix(".part"))


def _named_url(err: Exception) -> str:
    """The URL requests names in its error (the redirect target it has no adapter for)."""
    match = re.search(r"'([^']+)'", str(err))
    return match.group(1) if match else str(err)


def _range_total(content_range: str) -> int | None:
    """N of a 416's `Content-Range: bytes */N` (the file's length), None when absent."""
    match = re.fullmatch(r"bytes \*/(\d+)", content_range.strip())
    return int(match.group(1)) if match else None


class _Silent:
    def update(self, advance: float = 0.0, completed: float | None = None) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress(name: str, total: int | None, show: bool) -> ProgressReporter | _Silent:
    return ProgressReporter(name, total=total, unit="B", bytes_mode=True) if show else _Silent()


def run_sources(dataset_id: str, attempts: list[tuple[str, Callable[[], Any]]]) -> Any:
    """Try sources in priority order: the first that succeeds wins; `SourceUnavailable` moves to the next."""
    failures = []
    for name, attempt in attempts:
        try:
            return attempt()
        except SourceUnavailable as err:
            failures.append(f"{name}: {err}")
            if len(failures) < len(attempts):
                warn(f"{dataset_id}: source {name} unavailable ({err}); trying the next source")
    raise DataError(f"{dataset_id}: no source worked ({'; '.join(failures)})")
