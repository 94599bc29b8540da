"""WebDataset shard sources: which text names shards, the shard list it expands to, and how one shard is opened.

A source is what `data.train` (or `clipctl data index`) names: a local `.tar`/`.tar.gz` file, a folder holding shards
(in subfolders too), a brace pattern (`shards/{00000..00999}.tar`), `file://`, `pipe:COMMAND`, `http(s)://` or an
fsspec URL (`s3://`, `gs://`, `hf://`, `memory://`, ...), or several of these joined by `::` (WebDataset's list
separator), which are one dataset. Expansion goes through `webdataset.shardlists.expand_urls` (the `::` split and
`braceexpand`), so a source means here what it means to WebDataset.

Opening: local files directly; `http(s)` through `requests` with connect and read timeouts (WebDataset's own `curl`
pipe retries for a minute and has no read timeout, so a stalled server would hang a run); `pipe:` through
WebDataset's `gopen` with a watchdog that ends a command that stops producing bytes; every other scheme through
`fsspec` and its backend (installed by an extra such as `clipctl[s3]`).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from clipctl.errors import DataError

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LIST_SEPARATOR = "::"
BRACES = re.compile(r"\{[^{}]*(\.\.|,)[^{}]*\}")
SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure"}


def is_shard_file(name: str) -> bool:
    return name.lower().endswith(SHARD_SUFFIXES)


def scheme_of(url: str) -> str:
    """ "pipe", "http", "s3", ..., "file" for `file://`, "" for a plain local path."""
    if url.startswith("pipe:"):
        return "pipe"
    match = SCHEME.match(url)
    return match.group(1).lower() if match else ""


def local_path(url: str) -> Path | None:
    """The local file a shard URL names (a plain path or `file://`), None for a remote one."""
    scheme = scheme_of(url)
    if scheme == "":
        return Path(url).expanduser()
    if scheme == "file":
        return Path(url2pathname(urlparse(url).path))
    return None


def is_shard_source(text: str) -> bool:
    """Whether `text` names shards for the shard readers: a URL, a pattern, a list, a shard file, or a folder whose
    shards the flat-folder reader cannot take (in subfolders, or `.tar.gz`). A flat folder of `.tar` files stays
    with the map-style reader of `clipctl.data.webdataset` (its numbering by key is what existing runs recorded)."""
    text = text.strip()
    if LIST_SEPARATOR in text or BRACES.search(text) or scheme_of(text):
        return True
    path = Path(text).expanduser()
    if path.is_file():
        return is_shard_file(path.name)
    if path.is_dir():
        shards = _shards_under(path)
        return any(p.parent != path or not p.name.endswith(".tar") for p in shards)
    return False


@dataclass(frozen=True)
class ShardList:
    """The shards of a source, in dataset order. `names[i]` is shard i's name relative to what the shards have in
    common (so the same shards read from a folder, a pattern or a server get the same names); `local[i]` its local
    file, when it is one."""

    source: str
    urls: tuple[str, ...]
    names: tuple[str, ...]

    @property
    def local(self) -> tuple[Path | None, ...]:
        return tuple(local_path(u) for u in self.urls)

    @property
    def all_local(self) -> bool:
        return all(p is not None for p in self.local)


def expand_source(text: str) -> ShardList:
    """The shard list `text` names; a DataError (exit 3) naming the part that names no shard."""
    from webdataset.shardlists import expand_urls

    text = text.strip()
    if not text:
        raise DataError("data.train is empty; name a dataset id, a pairs JSON, or WebDataset shards")
    urls: list[str] = []
    for url in expand_urls(text):
        urls.extend(_shards_of(url.strip(), text))
    if not urls:
        raise DataError(f"{text}: names no shards; expected .tar/.tar.gz WebDataset shards")
    return ShardList(text, tuple(urls), shard_names(urls))


def _shards_of(url: str, source: str) -> list[str]:
    """One expanded URL as shard URLs: a local folder becomes the shards under it, in path order."""
    scheme = scheme_of(url)
    path = local_path(url)
    if path is None:
        if scheme != "pipe" and scheme not in ("http", "https"):
            check_backend(scheme, url)
        return [url]
    if path.is_dir():
        shards = _shards_under(path)
        if not shards:
            raise DataError(f"{url}: no .tar/.tar.gz shards in this folder or below it; point data.train at shards")
        return [str(p) for p in shards]
    if not path.is_file():
        where = f" (in {source})" if source != url else ""
        raise DataError(f"{url}{where}: no such shard file; check the path or the brace pattern")
    if not is_shard_file(path.name):
        raise DataError(f"{url}: not a WebDataset shard; expected a .tar or .tar.gz file")
    return [str(path)]


def _shards_under(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.rglob("*") if is_shard_file(p.name) and p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )


def check_backend(scheme: str, url: str) -> None:
    """A DataError naming the extra to install when fsspec has no backend for `scheme` (s3fs, gcsfs, ...)."""
    import fsspec

    try:
        fsspec.get_filesystem_class(scheme)
    except ValueError:
        expected = "expected a path, pipe:, http(s):// or an fsspec URL"
        raise DataError(f"{url}: unknown URL scheme {scheme!r}; {expected}") from None
    except ImportError:
        extra = EXTRAS.get(scheme)
        how = f"pip install 'clipctl[{extra}]'" if extra else f"install the fsspec backend for {scheme}://"
        raise DataError(f"{url}: reading {scheme}:// needs its fsspec backend; {how}") from None


def shard_names(urls: list[str]) -> tuple[str, ...]:
    """Each URL without the folder prefix all of them share (a single one: its file name)."""
    if len(urls) == 1:
        return (urls[0].rstrip("/").rsplit("/", 1)[-1],)
    prefix = os.path.commonprefix(urls)
    cut = prefix.rfind("/") + 1
    return tuple(u[cut:] for u in urls)


@dataclass(frozen=True)
class OpenPolicy:
    """How long a shard read may wait for bytes before it counts as failed (never a hang)."""

    connect_timeout_s: float = 30.0
    read_timeout_s: float = 60.0


def open_shard(url: str, policy: OpenPolicy = OpenPolicy()) -> IO[bytes]:
    """A readable binary stream of one shard (close it when done); OSError/requests errors when it cannot be read."""
    path = local_path(url)
    if path is not None:
        return open(path, "rb")
    if scheme_of(url) == "pipe":
        return _open_pipe(url, policy)
    return open_remote(url, policy).stream


def shard_size(url: str, policy: OpenPolicy = OpenPolicy()) -> int | None:
    """The byte size of a remote shard without reading it (an HTTP HEAD's Content-Length, fsspec's info), None when
    it cannot be told: a local file (its index entry holds size and mtime), a `pipe:` command, no answer."""
    scheme = scheme_of(url)
    if scheme == "pipe" or local_path(url) is not None:
        return None
    try:
        if scheme in ("http", "https"):
            import requests

            timeout = (policy.connect_timeout_s, policy.read_timeout_s)
            response = requests.head(url, allow_redirects=True, timeout=timeout)
            length = response.headers.get("Content-Length")
            return int(length) if response.status_code == 200 and length is not None else None
        import fsspec

        filesystem, path = fsspec.core.url_to_fs(url)
        size = filesystem.size(path)
    except Exception:  # noqa: BLE001 (unreachable or unsupported: not told here; reading the shard retries)
        return None
    return int(size) if size is not None else None


@dataclass(frozen=True)
class RemoteStream:
    """An opened remote shard: its bytes from `start` on, and its whole size when the source says it (None when
    it does not, or when the bytes arrive encoded: then neither size nor offsets describe what is read)."""

    stream: IO[bytes]
    size: int | None
    start: int


def open_remote(url: str, policy: OpenPolicy = OpenPolicy(), start: int = 0) -> RemoteStream:
    """An HTTP(S) or fsspec shard's bytes from byte `start` where the source can begin there (an HTTP Range request,
    a seek), else from byte 0 (a server that ignores ranges): `start` of the result says which."""
    if scheme_of(url) in ("http", "https"):
        return _open_http(url, policy, start)
    import fsspec

    stream = fsspec.open(url, "rb").open()
    size = getattr(stream, "size", None)
    begin = start if start and stream.seekable() else 0
    if begin:
        stream.seek(begin)
    return RemoteStream(stream, size if isinstance(size, int) else None, begin)


# urllib3's response costs ~10 µs a read: a sample read by offset is one read, so small samples go through a buffer;
# a small one, so that what arrived before a stall still reaches the reader (a retry starts after it)
HTTP_BUFFER = 1 << 14
CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+)$")


def _open_http(url: str, policy: OpenPolicy, start: int = 0) -> RemoteStream:
    import requests

    headers = {"Range": f"bytes={start}-"} if start else {}
    timeout = (policy.connect_timeout_s, policy.read_timeout_s)
    response = requests.get(url, stream=True, timeout=timeout, headers=headers)
    ranged = CONTENT_RANGE.match(response.headers.get("Content-Range", "")) if response.status_code == 206 else None
    if start and (response.status_code == 416 or (response.status_code == 206 and ranged is None)):
        response.close()  # past the end (the shard shrank) or a range it does not describe: the whole shard
        return _open_http(url, policy)
    if response.status_code != 200 and not (start and ranged):
        response.close()
        raise OSError(f"HTTP {response.status_code}")
    response.raw.decode_content = True
    length = response.headers.get("Content-Length")
    size = int(ranged.group(2)) if ranged else int(length) if length and length.isdigit() else None
    encoded = response.headers.get("Content-Encoding", "identity").lower() != "identity"
    stream = io.BufferedReader(response.raw, HTTP_BUFFER)  # type: ignore[arg-type] (urllib3's is a raw stream)
    return RemoteStream(stream, None if encoded else size, int(ranged.group(1)) if ranged else 0)


class _WatchedPipe:
    """A `pipe:` stream whose command is killed when it produces nothing for `timeout_s` (the read then ends)."""

    def __init__(self, pipe: Any, timeout_s: float) -> None:
        self._pipe, self._timeout_s = pipe, timeout_s
        self._last = time.monotonic()
        self._closed = threading.Event()
        self.stalled = False
        threading.Thread(target=self._watch, daemon=True, name="clipctl-pipe-watch").start()

    def _watch(self) -> None:
        while not self._closed.wait(min(1.0, self._timeout_s / 4)):
            if time.monotonic() - self._last > self._timeout_s:
                self.stalled = True
                self._kill()
                return

    def _kill(self) -> None:
        """The whole command (a shell's children hold the pipe open too)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._pipe.proc.pid, signal.SIGKILL)

    def read(self, *args: Any) -> bytes:
        data = self._pipe.read(*args)
        self._last = time.monotonic()
        if self.stalled:
            raise OSError(f"no data for {self._timeout_s:g} s")
        return data

    def __enter__(self) -> _WatchedPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        if self._pipe.proc.poll() is None:
            self._kill()
        self._pipe.stream.close()
        self._pipe.proc.wait()


def _open_pipe(url: str, policy: OpenPolicy) -> IO[bytes]:
    """WebDataset's `Pipe` (what its `gopen` opens `pipe:` with: exit status checked), in its own session so that the
    watchdog can end the command with everything it started."""
    from webdataset.gopen import Pipe

    pipe = Pipe(url[len("pipe:") :], mode="rb", shell=True, bufsize=8192, ignore_status=[141], start_new_session=True)
    return _WatchedPipe(pipe, policy.read_timeout_s)  # type: ignore[return-value]


IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def shard_samples(stream: IO[bytes], url: str) -> Iterator[tuple[str, bytes, str]]:
    """(key, image bytes, raw caption) of each complete sample (an image and a `.txt`) of one shard, in order.

    Members stream through WebDataset's `tar_file_iterator` and `group_by_keys` (`.tar` and `.tar.gz` alike); keys
    follow its rule (the path up to the first dot of the file name), as the map-style reader's do."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    members = ({**member, "__url__": url} for member in tar_file_iterator(stream))
    for sample in group_by_keys(members):
        image = next((sample[ext] for ext in IMAGE_EXTS if ext in sample), None)
        if image is not None and "txt" in sample:
            yield sample["__key__"], image, sample["txt"].decode("utf-8", "replace")
