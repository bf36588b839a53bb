"""Google identity for the fakes: ID tokens from a metadata server, checked at Cloud Run's door.

`TokenAuthority` plays accounts.google.com: it mints JWT-shaped ID tokens and verifies them
(HMAC-signed here; Google signs RS256, which a test cannot forge either way).

`MetadataServer` is the metadata server one instance sees ("Get an ID token",
https://cloud.google.com/docs/authentication/get-id-token, metadata-server section):
`GET /computeMetadata/v1/instance/service-accounts/default/identity?audience=AUD` with the
header `Metadata-Flavor: Google` returns a token for the attached account only, with
`aud` = AUD and `exp` one hour on. Clients reach it through `GCE_METADATA_HOST`, the
variable Google's libraries honour. It also answers the project number and region, as
the real one does (`/project/numeric-project-id`, `/instance/region`).

`Ingress` is a Cloud Run service's URL: an HTTP listener that forwards to a backend only a
request Cloud Run would let through (run/docs/securing/managing-access and
run/docs/configuring/custom-audiences): `allUsers` holds roles/run.invoker, or the bearer
token is valid, its `aud` is one of the service's URLs and its account holds the invoker
role. No token: 403; a bad, expired or wrongly addressed token: 401.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ISSUER = "https://accounts.google.com"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenAuthority:
    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def mint(self, email: str, audience: str, *, lifetime: float = 3600) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": audience,
            "azp": email,
            "sub": hashlib.sha256(email.encode()).hexdigest()[:21],
            "email": email,
            "email_verified": True,
            "iat": now,
            "exp": now + int(lifetime),
        }
        head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64(json.dumps(claims).encode())
        return f"{head}.{body}.{self._sign(f'{head}.{body}')}"

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a token this authority minted and that has not expired, else None."""
        parts = token.split(".")
        if len(parts) != 3 or not hmac.compare_digest(
            self._sign(f"{parts[0]}.{parts[1]}"), parts[2]
        ):
            return None
        claims: dict[str, Any] = json.loads(_unb64(parts[1]))
        if claims.get("iss") != ISSUER or claims.get("exp", 0) <= time.time():
            return None
        return claims

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode(), hashlib.sha256).digest())


class _Server:
    """A ThreadingHTTPServer on a free 127.0.0.1 port, in a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    def owner(self) -> Any:
        return self.server.owner  # type: ignore[attr-defined]

    def reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _MetadataHandler(_Handler):
    def do_GET(self) -> None:
        owner: MetadataServer = self.owner()
        owner.requests.append(self.path)
        if self.headers.get("Metadata-Flavor") != "Google":
            self.reply(403, b"Missing Metadata-Flavor:Google header.")
            return
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        base = "/computeMetadata/v1/"
        answers = {
            base + "project/project-id": owner.project,
            base + "project/numeric-project-id": owner.project_number,
            base + "instance/region": f"projects/{owner.project_number}/regions/{owner.region}",
            base + "instance/service-accounts/default/email": owner.email,
        }
        if url.path == base + "instance/service-accounts/default/identity":
            audience = query.get("audience", [""])[0]
            if not audience:
                self.reply(400, b"non-empty audience parameter required")
                return
            self.reply(200, owner.authority.mint(owner.email, audience).encode())
        elif url.path in answers:
            self.reply(200, answers[url.path].encode())
        else:
            self.reply(404, b"not found")


class MetadataServer(_Server):
    """The metadata server of an instance running as `email`."""

    def __init__(
        self,
        authority: TokenAuthority,
        email: str,
        *,
        project: str,
        project_number: str,
        region: str,
    ) -> None:
        self.authority, self.email = authority, email
        self.project, self.project_number, self.region = project, project_number, region
        self.requests: list[str] = []
        super().__init__(_MetadataHandler)


class _IngressHandler(_Handler):
    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def _forward(self) -> None:
        owner: Ingress = self.owner()
        status, why = owner.admit(self.headers.get("Authorization", ""))
        owner.decisions.append((self.command, self.path, status))
        if status != 200:
            self.reply(status, why.encode())
            return
        backend = owner.backend
        if not backend:
            self.reply(503, b"Service Unavailable: no instance")
            return
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else None
        headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
        request = urllib.request.Request(
            backend + self.path, data=data, headers=headers, method=self.command
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=10) as response:
                self.reply(response.status, response.read(), "application/json")
        except urllib.error.HTTPError as exc:
            self.reply(exc.code, exc.read(), "application/json")
        except OSError as exc:  # no instance listening (yet)
            self.reply(503, f"Service Unavailable: {exc}".encode())


class Ingress(_Server):
    """One service's URL. `policy()` returns the members holding roles/run.invoker on it
    now; `audiences()` its URLs (a token's `aud` must be one of them)."""

    def __init__(
        self,
        authority: TokenAuthority,
        invokers: Callable[[], set[str]],
        audiences: Callable[[], list[str]],
    ) -> None:
        self.authority, self._invokers, self._audiences = authority, invokers, audiences
        self.backend = ""  # where an admitted request goes (the test's running process)
        self.decisions: list[tuple[str, str, int]] = []  # (method, path, status)
        super().__init__(_IngressHandler)

    def admit(self, authorization: str) -> tuple[int, str]:
        members = self._invokers()
        if "allUsers" in members:
            return 200, ""
        if not authorization.startswith("Bearer "):
            return 403, "Error: Forbidden. Your client does not have permission to get URL."
        claims = self.authority.verify(authorization.removeprefix("Bearer "))
        if claims is None or claims.get("aud") not in self._audiences():
            return 401, "Error: Unauthorized. The ID token is invalid, expired or not for this URL."
        if f"serviceAccount:{claims['email']}" not in members:
            return 403, "Error: Forbidden. Your client does not have permission to get URL."
        return 200, ""
