"""The service director: the registry every application service reports to when it starts.

POST /register {"name": ..., "url": ...}   record (or refresh) a registration
GET  /services                           {"services": {name: {"url": ..., "registered_at": ...}}}
GET  /healthz                            200 while the director serves
GET  /                                   a one-line description

Stdlib only; listens on $PORT (Cloud Run's contract).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("director")

MAX_BODY = 64 * 1024


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: dict[str, dict[str, str]] = {}

    def register(self, name: str, url: str) -> dict[str, str]:
        entry = {"url": url, "registered_at": datetime.now(UTC).isoformat(timespec="seconds")}
        with self._lock:
            self._services[name] = entry
        log.info("registered %s at %s", name, url)
        return entry

    def snapshot(self) -> dict[str, dict[str, str]]:
        with self._lock:
            return {name: dict(entry) for name, entry in self._services.items()}


class Handler(BaseHTTPRequestHandler):
    registry = Registry()

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, {"status": "ok", "service": os.environ.get("K_SERVICE", "director")})
        elif self.path == "/services":
            self._reply(200, {"services": self.registry.snapshot()})
        elif self.path == "/":
            self._reply(200, {"service": "director", "routes": ["/register", "/services"]})
        else:
            self._reply(404, {"error": f"no route {self.path}: try /services or /healthz"})

    def do_POST(self) -> None:
        if self.path != "/register":
            self._reply(404, {"error": f"no route {self.path}: POST /register"})
            return
        try:
            body = self._read_json()
            name, url = body["name"], body["url"]
            if not isinstance(name, str) or not isinstance(url, str) or not name or not url:
                raise ValueError("name and url must be non-empty strings")
        except (KeyError, ValueError) as exc:
            self._reply(400, {"error": f"want JSON {{'name': ..., 'url': ...}}: {exc}"})
            return
        self._reply(200, {"registered": name, **self.registry.register(name, url)})

    def _read_json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError(f"body larger than {MAX_BODY} bytes")
        body = json.loads(self.rfile.read(length) or b"{}")
        if not isinstance(body, dict):
            raise ValueError("body is not a JSON object")
        return body

    def _reply(self, status: int, document: dict[str, Any]) -> None:
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


def bind_host() -> str:
    """Loopback when run locally, all interfaces on Cloud Run (which requires it).

    Cloud Run sets K_SERVICE; archdeploy's local deployer sets it too, as Cloud Run
    would, and marks its processes with ARCHDEPLOY_SERVICE_ID: that means local."""
    if os.environ.get("ARCHDEPLOY_SERVICE_ID") or not os.environ.get("K_SERVICE"):
        return "127.0.0.1"
    return "0.0.0.0"  # Cloud Run routes to the container's interfaces


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(), format="%(message)s")
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer((bind_host(), port), Handler)
    log.info("director listening on port %d", port)
    server.serve_forever()


if __name__ == "__main__":
    main()
