"""The serving side of the fake Cloud Run: its services' URLs answer HTTP, as Cloud Run's
front end would, from the state the real run_v2 client left in `FakeCloudRun`.

- A request reaches a service by its host: the service's URL (`uri`, or any of `urls`)
  splits requests between revisions by the percents of `traffic_statuses` (smooth
  weighted round-robin, exact over 100 / gcd requests); a tag's URL (`TAG---...`, the
  `uri` of its traffic status) reaches its revision only
  (run/docs/rollouts-rollbacks-traffic-migration).
- Admission as Cloud Run's (run/docs/securing/managing-access,
  run/docs/configuring/custom-audiences): anyone when allUsers holds roles/run.invoker;
  else `Authorization: Bearer` an ID token from `authority` whose `aud` is one of the
  service's URLs, of an account holding roles/run.invoker on the service or on the
  project (`project_invokers`, what terraform grants). No token: 403; a bad token or
  another audience: 401.
- The "container" of a revision answers every path with JSON naming its service, its
  revision and its environment: what archdeploy deployed there, not what user code does.

`opener()` is the DNS: a urllib opener sending every https `*.run.app` request to this
listener (plain HTTP on loopback), with its host in `Host`.
"""

from __future__ import annotations

import json
import math
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fakes_google.cloudrun_server import FakeCloudRun
from tests.fakes_google.identity import TokenAuthority


class RunDataPlane:
    def __init__(
        self,
        fake: FakeCloudRun,
        authority: TokenAuthority,
        project_invokers: set[str] | None = None,
    ) -> None:
        self.fake, self.authority = fake, authority
        self.project_invokers = project_invokers or set()
        self.decisions: list[tuple[str, str, int]] = []  # (host, path, status)
        self._turns: dict[str, dict[str, int]] = {}  # service -> revision -> current weight
        self._lock = threading.Lock()
        plane = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = self.headers.get("Host", "")
                status, body = plane.answer(host, self.headers.get("Authorization", ""))
                plane.decisions.append((host, self.path, status))
                data = json.dumps(body).encode() if isinstance(body, dict) else body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.address = f"127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def opener(self) -> urllib.request.OpenerDirector:
        return urllib.request.build_opener(urllib.request.ProxyHandler({}), _ToLoopback(self))

    def answer(self, host: str, authorization: str) -> tuple[int, dict[str, Any] | str]:
        found = self._route(host)
        if found is None:
            return 404, f"no Cloud Run URL {host}"
        name, revision, service = found
        refused = self._admit(name, [str(u) for u in service.urls], authorization)
        if refused:
            return refused
        if revision is None:
            return 503, "Service Unavailable: no revision serves"
        env = {e.name: e.value for e in _template(self.fake, name, revision).containers[0].env}
        return 200, {"service": name.rsplit("/", 1)[-1], "revision": revision, "env": env}

    def _route(self, host: str) -> tuple[str, str | None, Any] | None:
        with self.fake._lock:
            services = dict(self.fake.services)
        for name, service in services.items():
            for status in service.traffic_statuses:
                if status.uri and urllib.parse.urlsplit(status.uri).netloc == host:
                    return name, str(status.revision), service
            urls = [service.uri, *service.urls]
            if host in {urllib.parse.urlsplit(str(u)).netloc for u in urls}:
                return name, self._split(name, service), service
        return None

    def _split(self, name: str, service: Any) -> str | None:
        percents: dict[str, int] = {}
        for status in service.traffic_statuses:
            if status.percent:
                percents[status.revision] = percents.get(status.revision, 0) + status.percent
        if not percents:
            return None
        divisor = math.gcd(*percents.values())
        with self._lock:  # smooth weighted round-robin, as nginx's (and the local front end)
            turns = self._turns.setdefault(name, {})
            for revision, percent in percents.items():
                turns[revision] = turns.get(revision, 0) + percent // divisor
            chosen = max(sorted(percents), key=lambda r: turns[r])
            turns[chosen] -= sum(percents.values()) // divisor
        return chosen

    def _admit(self, name: str, audiences: list[str], authorization: str) -> tuple[int, str] | None:
        members = self.fake.invokers(name) | self.project_invokers
        if "allUsers" in members:
            return None
        if not authorization.startswith("Bearer "):
            return 403, "Error: Forbidden. Your client does not have permission to get URL."
        claims = self.authority.verify(authorization.removeprefix("Bearer "))
        if claims is None or claims.get("aud") not in audiences:
            return 401, "Error: Unauthorized. The ID token is invalid, expired or not for this URL."
        if f"serviceAccount:{claims['email']}" not in members:
            return 403, "Error: Forbidden. Your client does not have permission to get URL."
        return None


def _template(fake: FakeCloudRun, name: str, revision: str) -> Any:
    with fake._lock:
        return next(r.template for r in fake.revisions[name] if r.id == revision)


class _ToLoopback(urllib.request.BaseHandler):
    """https://X.run.app/path -> http://<the data plane>/path with `Host: X.run.app`."""

    def __init__(self, plane: RunDataPlane) -> None:
        self.plane = plane

    def https_request(self, request: urllib.request.Request) -> urllib.request.Request:
        host = request.host
        if host.endswith(".run.app"):
            request.full_url = f"http://{self.plane.address}{request.selector}"
            request.add_unredirected_header("Host", host)
        return request
