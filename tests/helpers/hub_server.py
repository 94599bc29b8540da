"""A tiny Hugging Face Hub look-alike for the data tests (`HF_ENDPOINT=http://127.0.0.1:<port>`).

It answers what `huggingface_hub` asks for a dataset repo at a commit: HEAD/GET `/datasets/<repo>/resolve/
<rev>/<path>` (X-Repo-Commit, ETag / X-Linked-Etag = the git blob id or the LFS sha256, sizes) and GET
`/api/datasets/<repo>/tree/<rev>` (the listing `snapshot_download` filters with `allow_patterns`), so the
real client code runs: cache, revision pinning, token header. `claims[path]` overrides the hash the hub
publishes (a hub copy whose bytes do not match its own record), `gated = True` answers 401 GatedRepo.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


@dataclass
class FakeHub:
    repo: str
    revision: str
    files: dict[str, bytes] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)  # paths stored in LFS (ETag = sha256), else git blobs (sha1)
    claims: dict[str, str] = field(default_factory=dict)  # path -> the ETag the hub publishes instead
    gated: bool = False
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Authorization)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def etag(self, path: str) -> str:
        if path in self.claims:
            return self.claims[path]
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if path in self.lfs else git_blob_id(data)

    def downloads(self) -> list[str]:
        return [path for method, path, _ in self.log if method == "GET" and "/resolve/" in path]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    resolve = f"/datasets/{hub.repo}/resolve/{hub.revision}/"
    tree = f"/api/datasets/{hub.repo}/tree/{hub.revision}"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, headers: dict[str, str], body: bytes = b"", head: bool = False) -> None:
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(key, value)
            self.end_headers()
            if body and not head:
                self.wfile.write(body)

        def _serve(self, head: bool) -> None:
            path = unquote(urlparse(self.path).path)
            hub.log.append((self.command, path, self.headers.get("Authorization")))
            if hub.gated:
                self._answer(401, {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"}, b"{}", head)
            elif path.startswith(resolve):
                self._file(path[len(resolve) :], head)
            elif path.rstrip("/") == tree and not head:
                listing = [
                    {
                        "type": "file",
                        "path": p,
                        "size": len(d),
                        "oid": git_blob_id(d),
                        **({"lfs": {"oid": hub.etag(p), "size": len(d), "pointerSize": 134}} if p in hub.lfs else {}),
                    }
                    for p, d in sorted(hub.files.items())
                ]
                self._answer(200, {"Content-Type": "application/json"}, json.dumps(listing).encode())
            else:
                self._answer(404, {"X-Error-Code": "RepoNotFound"}, b"{}", head)

        def _file(self, rel: str, head: bool) -> None:
            if rel not in hub.files:
                self._answer(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": hub.revision}, b"{}", head)
                return
            data, etag = hub.files[rel], hub.etag(rel)
            headers = {"X-Repo-Commit": hub.revision, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
            if rel in hub.lfs:
                headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
            self._answer(200, headers, data, head)

        def do_HEAD(self) -> None:  # noqa: N802 (http.server API)
            self._serve(head=True)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(head=False)

    return Handler


def start_hub(repo: str, revision: str) -> tuple[FakeHub, ThreadingHTTPServer]:
    hub = FakeHub(repo, revision)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    httpd.daemon_threads = True
    hub.port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return hub, httpd


def serve_hub(monkeypatch: Any, tmp_path: Any, repo: str, revision: str) -> Any:
    """Start a FakeHub and point huggingface_hub at it (endpoint, online, an empty cache); a fixture generator."""
    from huggingface_hub import constants

    hub, httpd = start_hub(repo, revision)
    monkeypatch.delenv("CLIPCTL_MIRROR", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    # huggingface_hub reads HF_ENDPOINT once, at import: set what it derives from it, as a fresh import would
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True, raising=False)
    yield hub
    httpd.shutdown()
    httpd.server_close()
