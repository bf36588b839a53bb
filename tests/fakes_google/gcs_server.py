"""A fake Cloud Storage JSON API over HTTP, for the real `google.cloud.storage.Client`.

Point the client at it with `STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT` (the client
then uses anonymous credentials). Serves what the deployer uses: bucket get, object
metadata get, media download, multipart upload (the client's choice for objects up to
8 MiB) and resumable upload (`blob.open("wb")`, which streams in chunks: a POST starting
a session answered with its `Location`, PUTs of `Content-Range` chunks answered 308 until
the last), with `ifGenerationMatch` preconditions and the crc32c/md5 the client checks.
Objects live in memory; every request is recorded in `requests`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import google_crc32c

_BUCKET = re.compile(r"^/storage/v1/b/(?P<bucket>[^/]+)$")
_OBJECT = re.compile(r"^/(?:download/)?storage/v1/b/(?P<bucket>[^/]+)/o/(?P<name>.+)$")
_UPLOAD = re.compile(r"^/upload/storage/v1/b/(?P<bucket>[^/]+)/o$")
_RANGE = re.compile(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)")


@dataclass
class StoredObject:
    bucket: str
    name: str
    data: bytes
    content_type: str
    generation: int
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def resource(self) -> dict[str, Any]:
        crc = google_crc32c.Checksum(self.data).digest()
        return {
            "kind": "storage#object",
            "id": f"{self.bucket}/{self.name}/{self.generation}",
            "name": self.name,
            "bucket": self.bucket,
            "generation": str(self.generation),
            "metageneration": "1",
            "contentType": self.content_type,
            "size": str(len(self.data)),
            "md5Hash": base64.b64encode(hashlib.md5(self.data).digest()).decode(),
            "crc32c": base64.b64encode(crc).decode(),
            "storageClass": "STANDARD",
            "timeCreated": self.created,
            "updated": self.created,
        }


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]


class FakeGcs:
    def __init__(self) -> None:
        self.buckets: set[str] = set()
        self.objects: dict[tuple[str, str], StoredObject] = {}
        self.requests: list[Request] = []
        self.url = ""
        self._lock = threading.Lock()
        self._generation = 1_700_000_000_000_000
        self._sessions: list[tuple[str, dict[str, Any], dict[str, list[str]], bytearray]] = []
        self.chunks: list[int] = []  # sizes of the resumable chunks received
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def create_bucket(self, name: str) -> None:
        with self._lock:
            self.buckets.add(name)

    def put(self, bucket: str, name: str, data: bytes, content_type: str = "") -> None:
        """Store an object directly, as if someone else had uploaded it."""
        with self._lock:
            self.buckets.add(bucket)
            self._generation += 1
            stored = StoredObject(bucket, name, data, content_type, self._generation)
            self.objects[(bucket, name)] = stored

    def object(self, bucket: str, name: str) -> StoredObject:
        with self._lock:
            return self.objects[(bucket, name)]

    def uploads(self) -> list[Request]:
        """The uploads started (a multipart upload, or a resumable session)."""
        with self._lock:
            return [r for r in self.requests if r.path.startswith("/upload/storage/")]

    def start(self) -> str:
        fake = self

        class Handler(_Handler):
            gcs = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- API ----------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Any, body: bytes) -> tuple[int, Any]:
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query)
        with self._lock:
            self.requests.append(Request(method, path, query))
        if method == "GET" and (match := _BUCKET.match(path)):
            return self._get_bucket(unquote(match["bucket"]))
        if method == "GET" and (match := _OBJECT.match(path)):
            return self._get_object(unquote(match["bucket"]), unquote(match["name"]), query)
        if method == "POST" and (match := _UPLOAD.match(path)):
            kind = query.get("uploadType", [""])[0]
            bucket = unquote(match["bucket"])
            if kind == "resumable":
                return self._start_session(bucket, body, query)
            if kind != "multipart":
                return _error(501, f"the fake supports multipart and resumable, not {kind!r}")
            return self._insert(bucket, headers.get("content-type", ""), body, query)
        if method == "PUT" and path == "/upload/session" and "upload_id" in query:
            return self._chunk(query["upload_id"][0], headers.get("content-range", ""), body)
        return _error(404, f"the fake does not serve {method} {path}")

    def _get_bucket(self, bucket: str) -> tuple[int, Any]:
        with self._lock:
            if bucket not in self.buckets:
                return _error(404, f"The specified bucket does not exist: {bucket}")
        created = "2024-01-01T00:00:00.000Z"
        resource = {"kind": "storage#bucket", "id": bucket, "name": bucket, "location": "US"}
        return 200, resource | {"metageneration": "1", "timeCreated": created, "updated": created}

    def _get_object(self, bucket: str, name: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        with self._lock:
            stored = self.objects.get((bucket, name))
        if stored is None:
            return _error(404, f"No such object: {bucket}/{name}")
        if query.get("alt") == ["media"]:
            return 200, stored
        return 200, stored.resource()

    def _start_session(
        self, bucket: str, body: bytes, query: dict[str, list[str]]
    ) -> tuple[int, Any]:
        metadata = json.loads(body or b"{}")
        metadata.setdefault("name", query.get("name", [""])[0])
        with self._lock:
            self._sessions.append((bucket, metadata, query, bytearray()))
            upload_id = len(self._sessions) - 1
        return 200, {"__location__": f"{self.url}/upload/session?upload_id={upload_id}"}

    def _chunk(self, upload_id: str, content_range: str, body: bytes) -> tuple[int, Any]:
        bucket, metadata, query, received = self._sessions[int(upload_id)]
        match = _RANGE.fullmatch(content_range.strip())
        if match is None:
            return _error(400, f"bad Content-Range {content_range!r}")
        if match[1] is not None and int(match[1]) != len(received):
            return _error(400, f"chunk starts at {match[1]}, not at {len(received)}")
        received += body
        self.chunks.append(len(body))
        if match[3] == "*":  # not the last chunk
            return 308, {"__range__": f"bytes=0-{len(received) - 1}"}
        return self._store(bucket, metadata, "application/octet-stream", bytes(received), query)

    def _insert(
        self, bucket: str, content_type: str, body: bytes, query: dict[str, list[str]]
    ) -> tuple[int, Any]:
        metadata, media_type, data = _multipart(content_type, body)
        return self._store(bucket, metadata, media_type, data, query)

    def _store(
        self,
        bucket: str,
        metadata: dict[str, Any],
        media_type: str,
        data: bytes,
        query: dict[str, list[str]],
    ) -> tuple[int, Any]:
        name = metadata["name"]
        sent_crc = metadata.get("crc32c")
        if sent_crc and base64.b64decode(sent_crc) != google_crc32c.Checksum(data).digest():
            return _error(400, "Provided CRC32C does not match the object data")
        with self._lock:
            if bucket not in self.buckets:
                return _error(404, f"The specified bucket does not exist: {bucket}")
            existing = self.objects.get((bucket, name))
            wanted = query.get("ifGenerationMatch", [None])[0]
            if wanted is not None and int(wanted) != (existing.generation if existing else 0):
                return _error(412, "At least one of the pre-conditions you specified did not hold.")
            self._generation += 1
            content = metadata.get("contentType") or media_type
            stored = StoredObject(bucket, name, data, content, self._generation)
            self.objects[(bucket, name)] = stored
        return 200, stored.resource()


class _Handler(BaseHTTPRequestHandler):
    gcs: FakeGcs
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload = self.gcs.handle(method, self.path, self.headers, body)
        headers = {}
        if isinstance(payload, StoredObject):
            data = payload.data
            content_type = "application/octet-stream"
            crc = base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
            md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
            headers["x-goog-hash"] = f"crc32c={crc},md5={md5}"
            headers["x-goog-generation"] = str(payload.generation)
        elif isinstance(payload, dict) and ("__location__" in payload or "__range__" in payload):
            if "__location__" in payload:
                headers["location"] = payload["__location__"]
            else:
                headers["range"] = payload["__range__"]
            data, content_type = b"", "text/plain"
        else:
            data = json.dumps(payload).encode()
            content_type = "application/json; charset=UTF-8"
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures
        pass


def _multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], str, bytes]:
    """(metadata, media content type, media) of a `multipart/related` upload body."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise ValueError(f"no boundary in {content_type!r}")
    separator = b"--" + match[1].encode()
    parts = [p for p in body.split(separator) if p not in (b"", b"--", b"--\r\n")]
    decoded = []
    for part in parts[:2]:
        head, _, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        media_type = ""
        for line in head.decode().split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-type":
                media_type = value.strip()
        decoded.append((media_type, content.removesuffix(b"\r\n")))
    metadata = json.loads(decoded[0][1])
    return metadata, decoded[1][0], decoded[1][1]


def _error(code: int, message: str) -> tuple[int, dict[str, Any]]:
    reasons = {400: "invalid", 404: "notFound", 412: "conditionNotMet", 501: "notImplemented"}
    detail = {"message": message, "reason": reasons.get(code, "error"), "domain": "global"}
    return code, {"error": {"code": code, "message": message, "errors": [detail]}}
