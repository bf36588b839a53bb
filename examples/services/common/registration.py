"""What every example application service shares: director registration and health.

Copied into each service's build as `registration.py` by the architecture's
`config_templates`, so each service image stays self-contained. Stdlib only.

A service registers with the director at $SERVICE_DIRECTOR_URL in a background thread,
every 0.5 s for up to 20 s, under the name $SERVICE_NAME (else $K_SERVICE) and its own URL.
GET /healthz answers 200 once registered, 503 before: a deployer waiting for health waits
for registration.

On Cloud Run ($K_SERVICE set), both ends of the call need Google:
- The director accepts only callers with an ID token whose audience is its URL and whose
  account holds roles/run.invoker on it (archdeploy grants that to every service handed
  the director's URL). The token comes from the metadata server
  (https://cloud.google.com/docs/authentication/get-id-token, metadata server:
  .../service-accounts/default/identity?audience=URL, header Metadata-Flavor: Google);
  $GCE_METADATA_HOST overrides its address, as in Google's own libraries. When the
  metadata server does not answer, the call goes without a token (and the director says
  why it refused).
- The URL registered must reach the service on Cloud Run: $SERVICE_URL when set, else the
  service's deterministic URL https://$K_SERVICE-PROJECT_NUMBER.REGION.run.app
  (https://cloud.google.com/run/docs/triggering/https-request, "Deterministic URL"),
  from the metadata server's project number and region. Off Cloud Run it is
  http://127.0.0.1:$PORT, which only the local deployer's processes can reach.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("registration")

REGISTER_EVERY = 0.5  # seconds
REGISTER_FOR = 20.0  # seconds
METADATA_TIMEOUT = 2.0  # seconds


_NO_METADATA = threading.Event()  # set once it did not answer: not asked again


def metadata(path: str) -> str | None:
    """A value from the metadata server (`path` under /computeMetadata/v1/), or None when it
    does not answer: off Google Cloud, or not reachable (then it is not asked again)."""
    if _NO_METADATA.is_set():
        return None
    host = os.environ.get("GCE_METADATA_HOST") or "metadata.google.internal"
    request = urllib.request.Request(
        f"http://{host}/computeMetadata/v1/{path}", headers={"Metadata-Flavor": "Google"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=METADATA_TIMEOUT) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:  # it answered: this path, not the server, failed
        exc.close()
        log.warning("metadata %s: %s", path, exc)
        return None
    except (OSError, ValueError) as exc:
        log.info("no metadata server (%s): not on Google Cloud", exc)
        _NO_METADATA.set()
        return None


def id_token(audience: str) -> str | None:
    """An ID token for `audience` on Cloud Run; None elsewhere."""
    if not os.environ.get("K_SERVICE"):
        return None
    query = urllib.parse.urlencode({"audience": audience})
    return metadata(f"instance/service-accounts/default/identity?{query}")


def own_url(port: int) -> str:
    """The URL others reach this service at (see the module doc)."""
    if os.environ.get("SERVICE_URL"):
        return os.environ["SERVICE_URL"]
    service = os.environ.get("K_SERVICE")
    if service:
        number = metadata("project/numeric-project-id")
        region = metadata("instance/region")  # projects/NUMBER/regions/REGION
        if number and region:
            return f"https://{service}-{number}.{region.rsplit('/', 1)[-1]}.run.app"
    return f"http://127.0.0.1:{port}"


Route = Callable[["ServiceHandler"], tuple[int, dict[str, Any]]]


class Registration:
    """Registers one service with the director; `error` says why it is not registered yet."""

    def __init__(self, name: str, url: str, director: str) -> None:
        self.name, self.url, self.director = name, url, director.rstrip("/")
        self.done = threading.Event()
        self.error = "not registered yet"

    def run(self) -> None:
        if not self.director:
            self.error = "SERVICE_DIRECTOR_URL is not set"
            return
        deadline = time.monotonic() + REGISTER_FOR
        while time.monotonic() < deadline:
            try:
                self._post()
            except (OSError, ValueError) as exc:
                self.error = f"registering with {self.director}: {exc}"
                time.sleep(REGISTER_EVERY)
            else:
                self.done.set()
                log.info("registered %s at %s with %s", self.name, self.url, self.director)
                return
        log.error("gave up registering after %.0fs: %s", REGISTER_FOR, self.error)

    def _post(self) -> None:
        body = json.dumps({"name": self.name, "url": self.url}).encode()
        headers = {"Content-Type": "application/json"}
        token = id_token(self.director)  # Cloud Run: audience = the director's URL
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(f"{self.director}/register", data=body, headers=headers)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=2) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            raise


class ServiceHandler(BaseHTTPRequestHandler):
    """Serves /healthz plus a service's own GET and POST routes (path -> route)."""

    registration: Registration
    get_routes: dict[str, Route] = {}
    post_routes: dict[str, Route] = {}

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(*self._health())
        else:
            self._route(self.get_routes)

    def do_POST(self) -> None:
        self._route(self.post_routes)

    def read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"null")

    def _route(self, routes: dict[str, Route]) -> None:
        route = routes.get(self.path)
        if route is None:
            self._reply(404, {"error": f"no {self.command} route {self.path}"})
            return
        try:
            self._reply(*route(self))
        except ValueError as exc:
            self._reply(400, {"error": str(exc)})

    def _health(self) -> tuple[int, dict[str, Any]]:
        registration = self.registration
        if not registration.done.is_set():
            return 503, {"registered": False, "error": registration.error}
        return 200, {
            "registered": True,
            "service": registration.name,
            "dataflow": os.environ.get("DATAFLOW_NAME", ""),
            "project": os.environ.get("PROJECT_ID", ""),
        }

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


def serve(handler: type[ServiceHandler], port: int | None = None) -> None:
    """Register in the background and serve `handler` on `port` (default $PORT) forever."""
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(), format="%(message)s")
    port = port or int(os.environ.get("PORT", "8080"))
    name = os.environ.get("SERVICE_NAME") or os.environ.get("K_SERVICE") or "unnamed"
    url = own_url(port)
    handler.registration = Registration(name, url, os.environ.get("SERVICE_DIRECTOR_URL", ""))
    server = ThreadingHTTPServer((bind_host(), port), handler)
    threading.Thread(target=handler.registration.run, name="register", daemon=True).start()
    log.info("%s listening on port %d", name, port)
    server.serve_forever()
