"""A tiny HTTP file server for the data tests: Range requests, redirects, scripted failures.

Python's `http.server` serves whole files only; downloads must be tested against partial content,
redirects, auth failures, 5xx bursts, truncated bodies and wrong content, so this handler scripts them.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FileServer:
    """`files[path] = bytes`; `script[path]` is a list of one-shot behaviours consumed per request:
    {"status": 503} | {"redirect": "/other"} | {"truncate": n} | {"body": b"..."} | {"ignore_range": True} |
    {"stall_s": s} (half the body, then silence);
    `{"no_length": True}` sends no Content-Length (the body ends when the connection closes) and
    `{"content_type": "text/html"}` sets that header; both combine with the others."""

    files: dict[str, bytes] = field(default_factory=dict)
    script: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    log: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header) of each GET
    heads: list[str] = field(default_factory=list)  # the path of each HEAD (answered from `files`, never scripted)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:  # noqa: N802 (http.server API)
            path = self.path.split("?")[0]
            server.heads.append(path)
            body = server.files.get(path)
            self.send_response(404 if body is None else 200)
            self.send_header("Content-Length", str(0 if body is None else len(body)))
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            path = self.path.split("?")[0]
            server.log.append((path, self.headers.get("Range")))
            steps = server.script.get(path)
            step = steps.pop(0) if steps else {}
            if "status" in step:
                self.send_response(step["status"])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if "redirect" in step:
                self.send_response(302)
                self.send_header("Location", step["redirect"])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = step.get("body", server.files.get(path))
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end = 0, len(body) - 1
            match = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range") or "")
            if match and not step.get("ignore_range"):
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else len(body) - 1
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
            else:
                self.send_response(200)
            chunk = body[start : end + 1]
            if not step.get("no_length"):
                self.send_header("Content-Length", str(len(chunk)))
            if "content_type" in step:
                self.send_header("Content-Type", step["content_type"])
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if "truncate" in step:
                chunk = chunk[: step["truncate"]]
            if "stall_s" in step:  # half the body, then nothing for that long (a hung server)
                self.wfile.write(chunk[: len(chunk) // 2])
                self.wfile.flush()
                time.sleep(step["stall_s"])
                return
            self.wfile.write(chunk)
            self.wfile.flush()

    return Handler


def start(server: FileServer) -> tuple[ThreadingHTTPServer, threading.Thread]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    httpd.daemon_threads = True
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return httpd, thread


def serve_mirror(monkeypatch: Any, retries: int) -> Any:
    """Start a FileServer, point CLIPCTL_MIRROR at it with fast retries; a generator for pytest fixtures."""
    from clipctl.data import fetch

    files = FileServer()
    httpd, _ = start(files)
    monkeypatch.setenv("CLIPCTL_MIRROR", files.url)
    monkeypatch.setattr(fetch, "POLICY", fetch.FetchPolicy(retries=retries, backoff_s=0.01, read_timeout_s=5))
    yield files
    httpd.shutdown()
    httpd.server_close()
