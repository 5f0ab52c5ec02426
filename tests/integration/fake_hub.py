"""A loopback stand-in for the Hugging Face Hub: the endpoints `huggingface_hub` calls.

- `GET /api/models/{repo}[/revision/{rev}]`: repository info with its file list (`siblings`).
- `HEAD|GET /{repo}/resolve/{rev}/{file}`: `X-Repo-Commit`, `ETag`, and for LFS files
  `X-Linked-Etag` (the sha256) and `X-Linked-Size`; `Range: bytes=N-` answered with 206.
- Private repositories answer 401 `X-Error-Code: RepoNotFound` without the right bearer token.
- `advertised_size[file]` claims another size (a model too big for the disk);
  `cut_after[file] = N`: the first GET of that file sends N bytes of the body, then drops the
  connection; `corrupt` files are served with one byte changed (the advertised hash is kept).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_API = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$")


@dataclass
class Repo:
    files: dict[str, bytes]
    token: str | None = None  # set: private, readable with this token only
    corrupt: set[str] = field(default_factory=set)
    advertised_size: dict[str, int] = field(default_factory=dict)  # X-Linked-Size overrides


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def gets(self, filename: str) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET" and s.path.endswith("/" + filename)]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.seen.append(Seen(self.command, path, dict(self.headers.items())))
            if m := _API.match(path):
                self._api(m.group(1))
            elif m := _RESOLVE.match(path):
                self._resolve(m.group(1), m.group(3), head)
            else:
                self._error(404, "RepoNotFound", "not found")

        def _repo(self, repo_id: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            if repo.token and self.headers.get("authorization") != f"Bearer {repo.token}":
                self._error(401, "RepoNotFound", "Invalid username or password.")
                return None
            return repo

        def _api(self, repo_id: str) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            body = json.dumps(
                {
                    "id": repo_id,
                    "sha": COMMIT,
                    "private": repo.token is not None,
                    "siblings": [{"rfilename": f} for f in repo.files],
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _resolve(self, repo_id: str, filename: str, head: bool) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            data = repo.files.get(filename)
            if data is None:
                self._error(404, "EntryNotFound", "Entry not found")
                return
            sha = hashlib.sha256(data).hexdigest()
            if filename in repo.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start = _range_start(self.headers.get("range"))
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{sha}"')
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(repo.advertised_size.get(filename, len(data))))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if head:
                return
            cut = hub.cut_after.pop(filename, None)
            if cut is not None:
                self.wfile.write(data[start : start + cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(data[start:])

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler


def _range_start(value: str | None) -> int:
    m = re.fullmatch(r"bytes=(\d+)-", value or "")
    return int(m.group(1)) if m else 0


@contextmanager
def serve(hub: FakeHub) -> Iterator[FakeHub]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
