"""A loopback HTTP server that answers the Hugging Face Hub endpoints `snapshot_download` uses.

Read from huggingface_hub 2.4's client (`_snapshot_download.py`, `file_download.py`, `hf_api.py`):

- `GET /api/{models|datasets}/{repo}[/revision/{rev}]` (repo_info; `?blobs=True` adds file sizes);
- `GET /api/{models|datasets}/{repo}/tree/{sha}?recursive=True` (one page, no `Link` header);
- `HEAD /[datasets/]{repo}/resolve/{rev}/{file}`: `ETag`, `X-Repo-Commit`, `Content-Length`;
- `GET` of the same path, honouring `Range: bytes=N-` with `206` and `Content-Range`.

No `X-Xet-Hash` header and no `xetHash` tree field: the client then downloads over plain HTTP
even with `hf_xet` installed. Errors carry the `X-Error-Code` header the real Hub sends
(`RepoNotFound`, `GatedRepo`), so the client raises the same exception types.

Behaviour switches, per repo: `status` (answer every request of the repo with that code),
`gated` (metadata public, files 401 GatedRepo), `drop_once` (file names whose first full GET
is cut half way by closing the socket), `dead_after_drop` (then that many GETs of the file are
cut before the body: enough of them make the client give up, as on a real outage).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit


@dataclass
class FakeRepo:
    """One repo: files (path -> bytes) at one commit."""

    repo_id: str
    files: dict[str, bytes]
    repo_type: str = "model"
    sha: str = ""
    status: int | None = None  # every request of this repo answers with this code
    gated: bool = False
    drop_once: set[str] = field(default_factory=set)
    dead_after_drop: int = 0  # after the drop, this many GETs of the file close before any byte
    claimed_sizes: dict[str, int] = field(default_factory=dict)  # sizes the metadata claims

    def __post_init__(self) -> None:
        if not self.sha:
            self.sha = hashlib.sha1(self.repo_id.encode()).hexdigest()

    def etag(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest()


_API = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)(?:/(revision|tree)/([^/?]+))?$")
_RESOLVE = re.compile(r"^(/datasets)?/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class LoopbackHub:
    """Start with `with LoopbackHub([...]) as hub:`; `hub.endpoint` is the HF_ENDPOINT to use."""

    def __init__(self, repos: list[FakeRepo]) -> None:
        self.repos = {(r.repo_type, r.repo_id): r for r in repos}
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._dropped: set[tuple[str, str]] = set()
        self._dead: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> LoopbackHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests(self, method: str) -> list[tuple[str, str | None]]:
        return [(path, rng) for m, path, rng in self.log if m == method]

    # ------------------------------------------------------------------ request handling

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                return

            def do_GET(self) -> None:
                hub._serve(self, head=False)

            def do_HEAD(self) -> None:
                hub._serve(self, head=True)

        return Handler

    def _serve(self, req: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = unquote(urlsplit(req.path).path)
        with self._lock:
            self.log.append(("HEAD" if head else "GET", path, req.headers.get("Range")))
        if m := _API.match(path):
            kind, repo_id, what, _rev = m.groups()
            repo = self.repos.get((kind[:-1], repo_id))
            if repo is None:
                return self._error(req, 404, "RepoNotFound", head)
            if repo.status is not None:
                return self._error(req, repo.status, None, head)
            if what in (None, "revision"):
                body: Any = {
                    "id": repo_id,
                    "sha": repo.sha,
                    "private": False,
                    "gated": repo.gated and "auto",
                    "siblings": [
                        {"rfilename": p, "size": repo.claimed_sizes.get(p, len(b))}
                        for p, b in repo.files.items()
                    ],
                }
            else:
                body = [
                    {"type": "file", "path": p, "size": len(b), "oid": repo.etag(p)}
                    for p, b in repo.files.items()
                ]
            return self._json(req, body, head)
        if m := _RESOLVE.match(path):
            is_dataset, repo_id, _rev, filename = m.groups()
            repo = self.repos.get(("dataset" if is_dataset else "model", repo_id))
            if repo is None:
                return self._error(req, 404, "RepoNotFound", head)
            if repo.status is not None:
                return self._error(req, repo.status, None, head)
            if repo.gated:
                return self._error(req, 401, "GatedRepo", head)
            if filename not in repo.files:
                return self._error(req, 404, "EntryNotFound", head)
            return self._file(req, repo, filename, head)
        return self._error(req, 404, None, head)

    def _headers(self, req: BaseHTTPRequestHandler, status: int, headers: dict[str, str]) -> None:
        req.send_response(status)
        for key, value in headers.items():
            req.send_header(key, value)
        req.end_headers()

    def _json(self, req: BaseHTTPRequestHandler, body: Any, head: bool) -> None:
        data = json.dumps(body).encode()
        self._headers(req, 200, {"Content-Type": "application/json", "Content-Length": str(len(data))})
        if not head:
            req.wfile.write(data)

    def _error(self, req: BaseHTTPRequestHandler, status: int, code: str | None, head: bool) -> None:
        data = json.dumps({"error": f"status {status}"}).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data))}
        if code:
            headers["X-Error-Code"] = code
        self._headers(req, status, headers)
        if not head:
            req.wfile.write(data)

    def _file(self, req: BaseHTTPRequestHandler, repo: FakeRepo, filename: str, head: bool) -> None:
        data = repo.files[filename]
        common = {"ETag": f'"{repo.etag(filename)}"', "X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
        range_header = req.headers.get("Range")
        if head:
            return self._headers(req, 200, {**common, "Content-Length": str(len(data))})
        key = (repo.repo_id, filename)
        with self._lock:
            dead = key in self._dropped and self._dead.get(key, 0) < repo.dead_after_drop
            if dead:
                self._dead[key] = self._dead.get(key, 0) + 1
        if dead:
            return self._hang_up(req, common, len(data))
        if range_header and (m := re.fullmatch(r"bytes=(\d+)-", range_header.strip())):
            start = int(m.group(1))
            part = data[start:]
            self._headers(
                req,
                206,
                {
                    **common,
                    "Content-Length": str(len(part)),
                    "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}",
                },
            )
            req.wfile.write(part)
            return None
        with self._lock:
            drop = filename in repo.drop_once and key not in self._dropped
            if drop:
                self._dropped.add(key)
        self._headers(req, 200, {**common, "Content-Length": str(len(data))})
        if drop:  # half the body, then hang up: the client sees an incomplete response
            req.wfile.write(data[: len(data) // 2])
            req.wfile.flush()
            req.close_connection = True
            req.connection.shutdown(2)
            return None
        req.wfile.write(data)
        return None

    def _hang_up(self, req: BaseHTTPRequestHandler, common: dict[str, str], size: int) -> None:
        """Promise the body, send none of it, close: the client sees a dropped connection."""
        self._headers(req, 200, {**common, "Content-Length": str(size)})
        req.wfile.flush()
        req.close_connection = True
        req.connection.shutdown(2)
