"""Fake REST front of the Google APIs `archdeploy preflight` asks, on one local port.

Paths as the real APIs serve them (their paths do not collide, so one server answers all):
- Service Usage `GET /v1/projects/P/services/S` -> `{"state": "ENABLED"|"DISABLED"}`; a
  service never enabled is DISABLED ("It has either been explicitly disabled, or has never
  been enabled", services.get reference).
- Artifact Registry `GET /v1/projects/P/locations/L/repositories/R` (404 when missing) and
  `GET ...:getIamPolicy`.
- IAM `POST /v1/projects/-/serviceAccounts/E:testIamPermissions`: the subset of the asked
  permissions the caller holds; wildcards are INVALID_ARGUMENT ("Permissions with wildcards
  (such as * or storage.*) are not allowed"); a missing account is 404.
- Secret Manager `GET /v1/projects/P/secrets/S` and `GET ...:getIamPolicy`.
- Resource Manager `POST /v1/projects/P:getIamPolicy`.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PATHS = [
    ("GET", re.compile(r"/v1/projects/([^/]+)/services/([^/:]+)"), "service"),
    ("GET", re.compile(r"/v1/(projects/[^/]+/locations/[^/]+/repositories/[^/:]+)"), "repository"),
    (
        "GET",
        re.compile(r"/v1/(projects/[^/]+/locations/[^/]+/repositories/[^/:]+):getIamPolicy"),
        "repo_policy",
    ),
    ("POST", re.compile(r"/v1/projects/-/serviceAccounts/([^/:]+):testIamPermissions"), "test_sa"),
    ("GET", re.compile(r"/v1/(projects/[^/]+/secrets/[^/:]+)"), "secret"),
    ("GET", re.compile(r"/v1/(projects/[^/]+/secrets/[^/:]+):getIamPolicy"), "secret_policy"),
    ("POST", re.compile(r"/v1/projects/([^/:]+):getIamPolicy"), "project_policy"),
]


@dataclass
class GoogleState:
    enabled: set[tuple[str, str]] = field(default_factory=set)  # (project, api)
    repositories: dict[str, dict[str, set[str]]] = field(
        default_factory=dict
    )  # res -> role -> members
    accounts: dict[str, set[str]] = field(default_factory=dict)  # email -> caller's permissions
    secrets: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    projects: dict[str, dict[str, set[str]]] = field(default_factory=dict)


def _policy(bindings: dict[str, set[str]]) -> dict[str, Any]:
    return {"bindings": [{"role": r, "members": sorted(m)} for r, m in sorted(bindings.items())]}


def _error(status: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"code": status, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str) -> None:
        fake: FakeGoogleApis = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        fake.requests.append((method, self.path))
        status, document = fake.route(method, self.path.split("?")[0], body)
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeGoogleApis:
    def __init__(self) -> None:
        self.state = GoogleState()
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> str:
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def route(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        for verb, pattern, name in _PATHS:
            match = pattern.fullmatch(path)
            if verb == method and match:
                answer: tuple[int, dict[str, Any]] = getattr(self, f"_{name}")(
                    *match.groups(), body
                )
                return answer
        return _error(404, f"no such method {method} {path}")

    def _service(self, project: str, api: str, _: Any) -> tuple[int, dict[str, Any]]:
        state = "ENABLED" if (project, api) in self.state.enabled else "DISABLED"
        return 200, {"name": f"projects/{project}/services/{api}", "state": state}

    def _repository(self, resource: str, _: Any) -> tuple[int, dict[str, Any]]:
        if resource not in self.state.repositories:
            return _error(404, f"Requested entity was not found: {resource}")
        return 200, {"name": resource, "format": "DOCKER"}

    def _repo_policy(self, resource: str, _: Any) -> tuple[int, dict[str, Any]]:
        if resource not in self.state.repositories:
            return _error(404, "Requested entity was not found.")
        return 200, _policy(self.state.repositories[resource])

    def _test_sa(self, email: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        asked = body.get("permissions", [])
        if any("*" in permission for permission in asked):
            return _error(
                400, "Permissions with wildcards (such as * or storage.*) are not allowed"
            )
        if email not in self.state.accounts:
            return _error(404, f"Service account {email} does not exist.")
        held = [p for p in asked if p in self.state.accounts[email]]
        return 200, ({"permissions": held} if held else {})

    def _secret(self, resource: str, _: Any) -> tuple[int, dict[str, Any]]:
        if resource not in self.state.secrets:
            return _error(404, f"Secret [{resource}] not found or has no versions.")
        return 200, {"name": resource}

    def _secret_policy(self, resource: str, _: Any) -> tuple[int, dict[str, Any]]:
        if resource not in self.state.secrets:
            return _error(404, "Requested entity was not found.")
        return 200, _policy(self.state.secrets[resource])

    def _project_policy(self, project: str, _: Any) -> tuple[int, dict[str, Any]]:
        return 200, _policy(self.state.projects.get(project, {}))
