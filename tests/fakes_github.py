"""A fake GitHub REST API over HTTP, serving an in-memory repository for the real client.

Serves what archdeploy calls: `GET /repos/O/R/contents/PATH?ref=SHA` (raw bytes with
`Accept: application/vnd.github.raw`, else GitHub's JSON with base64 content) and
`GET /repos/O/R/tarball/REF`, which, as GitHub does, redirects to a download host
(`/_codeload/...` here) serving a gzipped tar with one top directory `O-R-SHORTSHA/`.
Every request is recorded with its headers; `fail_next` scripts error statuses, and
`tarballs` replaces a commit's archive with any bytes (a malicious one).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import tarfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

_CONTENTS = re.compile(r"^/repos/(?P<repo>[^/]+/[^/]+)/contents/(?P<path>.+)$")
_TARBALL = re.compile(r"^/repos/(?P<repo>[^/]+/[^/]+)/tarball/(?P<ref>.+)$")
_CODELOAD = re.compile(r"^/_codeload/(?P<repo>[^/]+/[^/]+)/legacy\.tar\.gz/(?P<ref>.+)$")


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names


class FakeGitHub:
    def __init__(self, token: str | None = None) -> None:
        self.token = token  # when set, /repos/ calls need `Authorization: Bearer <token>`
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}  # repo -> sha -> path -> data
        self.tarballs: dict[tuple[str, str], bytes] = {}
        self.fail_next: list[int] = []
        self.delay = 0.0  # seconds before each answer: a slow GitHub
        self.requests: list[Seen] = []
        self.url = ""
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def commit(self, repo: str, sha: str, files: dict[str, bytes | str]) -> None:
        data = {
            path: body.encode() if isinstance(body, str) else body for path, body in files.items()
        }
        with self._lock:
            self.repos.setdefault(repo, {})[sha] = data

    def seen(self, kind: str) -> list[Seen]:
        """Requests whose path holds `kind` (`/contents/`, `/tarball/`, `/_codeload/`)."""
        with self._lock:
            return [r for r in self.requests if kind in r.path]

    def start(self) -> str:
        fake = self

        class Handler(_Handler):
            github = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        ).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- API ----------------------------------------------------------------------------

    def handle(self, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(target)
        path, query = unquote(parts.path), parse_qs(parts.query)
        with self._lock:
            self.requests.append(Seen("GET", path, query, headers))
            failure = self.fail_next.pop(0) if self.fail_next else None
        time.sleep(self.delay)
        if failure is not None:
            return _error(failure, "scripted failure")
        if path.startswith("/repos/") and self.token:
            given = headers.get("authorization")
            if given != f"Bearer {self.token}":
                return _error(401 if given else 404, "Bad credentials" if given else "Not Found")
        if match := _CONTENTS.match(path):
            ref = query.get("ref", [""])[0]
            return self._contents(match["repo"], match["path"], ref, headers.get("accept", ""))
        if match := _TARBALL.match(path):
            location = f"{self.url}/_codeload/{match['repo']}/legacy.tar.gz/{match['ref']}"
            return 302, {"Location": location}, b""
        if match := _CODELOAD.match(path):
            return self._tarball(match["repo"], match["ref"])
        return _error(404, "Not Found")

    def _contents(
        self, repo: str, path: str, ref: str, accept: str
    ) -> tuple[int, dict[str, str], bytes]:
        data = self.repos.get(repo, {}).get(ref, {}).get(path)
        if data is None:
            return _error(404, "Not Found")
        if accept == "application/vnd.github.raw":
            return 200, {"Content-Type": "application/vnd.github.raw"}, data
        body = {"type": "file", "path": path, "encoding": "base64"}
        body["content"] = base64.b64encode(data).decode()
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    def _tarball(self, repo: str, ref: str) -> tuple[int, dict[str, str], bytes]:
        if (repo, ref) in self.tarballs:
            return 200, {"Content-Type": "application/x-gzip"}, self.tarballs[(repo, ref)]
        files = self.repos.get(repo, {}).get(ref)
        if files is None:
            return _error(404, "Not Found")
        top = f"{repo.replace('/', '-')}-{ref[:7]}"
        return 200, {"Content-Type": "application/x-gzip"}, tarball(top, files, comment=ref)


def tarball(
    top: str, files: dict[str, bytes], *, comment: str = "", extra: Sequence[tarfile.TarInfo] = ()
) -> bytes:
    """A gzipped tar as GitHub makes it: a pax global header, then `top/` and the files."""
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": comment}
    ) as tar:
        tar.addfile(_info(f"{top}/", tarfile.DIRTYPE))
        for path, data in sorted(files.items()):
            tar.addfile(_info(f"{top}/{path}", tarfile.REGTYPE, len(data)), io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return gzip.compress(buffer.getvalue(), mtime=0)


def _info(name: str, kind: bytes, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mode = kind, size, linkname, 0o644
    return info


def entry(name: str, kind: bytes = tarfile.REGTYPE, *, size: int = 1, link: str = "") -> Any:
    """One tar entry for a hand-made (hostile) tarball."""
    return _info(name, kind, size if kind == tarfile.REGTYPE else 0, link)


def _error(status: int, message: str) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"message": message, "documentation_url": "https://docs.github.com"})
    return status, {"Content-Type": "application/json"}, body.encode()


class _Handler(BaseHTTPRequestHandler):
    github: FakeGitHub
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, extra, body = self.github.handle(self.path, headers)
        self.send_response(status)
        for name, value in {**extra, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    server = FakeGitHub(token="ghp-test-token-not-a-secret-elsewhere")
    server.start()
    yield server
    server.stop()
