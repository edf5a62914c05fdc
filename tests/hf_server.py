"""A Hugging Face-compatible HTTP server on 127.0.0.1 that serves real files, with faults on demand.

It speaks the parts of the Hub protocol that ``huggingface_hub`` uses to search (``/api/models?search=``),
list and download a model repo: ``/api/models/<repo>/revision/<rev>`` (with LFS sha256s) and HEAD/GET
``/<repo>/resolve/<rev>/<file>`` (X-Repo-Commit, X-Linked-Etag, X-Linked-Size, Range requests).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Repo:
    files: dict[str, Path]
    private: bool = False  # 401 without "Authorization: Bearer good-token"
    sha: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, path in self.files.items():
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
            self.sha[name] = digest.hexdigest()


@dataclass
class Faults:
    drop_after: dict[str, int] = field(default_factory=dict)  # file -> bytes sent before the connection drops (once)
    corrupt: set[str] = field(default_factory=set)  # files served with one byte flipped
    delay: dict[str, float] = field(default_factory=dict)  # file -> seconds to wait before each 64 KiB chunk
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    bytes_sent: dict[str, int] = field(default_factory=dict)


class HubServer:
    def __init__(self, repos: dict[str, Repo], commit: str = COMMIT) -> None:
        self.repos, self.commit = repos, commit  # commit: what the Hub answers as the revision's sha
        self.faults = Faults()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                server._handle(self, head=True)

            def do_GET(self) -> None:
                server._handle(self, head=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _repo(self, h: BaseHTTPRequestHandler, repo_id: str) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(h, 404, "RepoNotFound", "Repository not found")
            return None
        if repo.private and h.headers.get("Authorization") != "Bearer good-token":
            self._error(h, 401, "RepoNotFound", "Invalid username or password.")
            return None
        return repo

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.faults.requests.append(("HEAD" if head else "GET", path, h.headers.get("Range")))
        parts = path.strip("/").split("/")
        if parts == ["api", "models"]:  # a search: repos whose id holds ?search=, as the Hub lists them
            query = parse_qs(urlparse(h.path).query).get("search", [""])[0].lower()
            found = [{"id": r, "modelId": r, "downloads": 7, "likes": 1, "tags": ["gguf"]}
                     for r in sorted(self.repos) if query in r.lower()]
            self._json(h, found)
            return
        if parts[:2] == ["api", "models"]:
            repo_id = "/".join(parts[2:4])
            repo = self._repo(h, repo_id)
            if repo is not None:
                siblings = [{"rfilename": n, "size": p.stat().st_size,
                             "lfs": {"sha256": repo.sha[n], "size": p.stat().st_size, "pointerSize": 134}}
                            for n, p in repo.files.items()]
                self._json(h, {"id": repo_id, "modelId": repo_id, "sha": self.commit, "private": repo.private,
                                "siblings": siblings})
            return
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, filename = "/".join(parts[:2]), "/".join(parts[4:])
            repo = self._repo(h, repo_id)
            if repo is None:
                return
            if filename not in repo.files:
                self._error(h, 404, "EntryNotFound", f"{filename} does not exist")
                return
            self._send_file(h, repo, filename, head)
            return
        self._error(h, 404, "RepoNotFound", "no such route")

    @staticmethod
    def _json(h: BaseHTTPRequestHandler, data: object) -> None:
        body = json.dumps(data).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _send_file(self, h: BaseHTTPRequestHandler, repo: Repo, name: str, head: bool) -> None:
        data_path = repo.files[name]
        size = data_path.stat().st_size
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng.removeprefix("bytes=").split("-")[0] or 0)
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", self.commit)
        h.send_header("ETag", f'"{repo.sha[name]}"')
        h.send_header("X-Linked-Etag", f'"{repo.sha[name]}"')
        h.send_header("X-Linked-Size", str(size))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(size - start))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        h.end_headers()
        if head:
            return
        drop_at = self.faults.drop_after.pop(name, None)
        with data_path.open("rb") as fh:
            fh.seek(start)
            pos = start
            while chunk := fh.read(1 << 16):
                if name in self.faults.delay:
                    time.sleep(self.faults.delay[name])
                if name in self.faults.corrupt and pos <= size // 2 < pos + len(chunk):
                    i = size // 2 - pos
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1:]
                if drop_at is not None and pos + len(chunk) > drop_at:
                    h.wfile.write(chunk[: drop_at - pos])
                    self.faults.bytes_sent[name] = self.faults.bytes_sent.get(name, 0) + drop_at - pos
                    h.wfile.flush()
                    h.close_connection = True
                    h.connection.shutdown(2)  # the connection drops mid-file
                    return
                h.wfile.write(chunk)
                pos += len(chunk)
                self.faults.bytes_sent[name] = self.faults.bytes_sent.get(name, 0) + len(chunk)
