"""The dashboard on loopback, for `archdeploy ui`: a WSGI app guarded by a token.

Like a notebook server, the token travels once in the printed URL (`/?token=...`); the
answer sets it as an HttpOnly cookie and redirects to the same page without it. Any
request carrying neither the cookie nor the token gets 401.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from shared.doors.dashboard.app import route
from shared.ports import RunStore

COOKIE = "archdeploy_ui"  # + the port: browsers keep cookies per host, not per port


def cookie_name(request: Request) -> str:
    """One cookie per dashboard, as notebook servers do: a second `archdeploy ui` on
    another port must not replace (and so log out) the first one's."""
    return f"{COOKIE}_{request.environ.get('SERVER_PORT', '')}"


def new_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass
class DashboardApp:
    """WSGI callable: the dashboard's routes behind the token check."""

    store: RunStore
    token: str = field(default_factory=new_token)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        response = self._answer(request)
        return response(environ, start_response)

    def _answer(self, request: Request) -> Response:
        given = request.args.get("token")
        if given is not None and _same(given, self.token):
            kept = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
            query = f"?{urlencode(kept)}" if kept else ""
            response = Response(status=303, headers={"Location": request.path + query})
            response.set_cookie(
                cookie_name(request), self.token, httponly=True, samesite="Strict", path="/"
            )
            return response
        if not _same(request.cookies.get(cookie_name(request), ""), self.token):
            return Response(
                "401: open the URL `archdeploy ui` printed (it carries ?token=...)\n",
                status=401,
                content_type="text/plain; charset=utf-8",
            )
        body, status, headers = route(request.method, request.path, self.store)
        return Response(body, status=status, headers=headers)


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())


class Serving:
    """A running dashboard server on a thread; `url` carries the token. `close()` stops it."""

    def __init__(self, app: DashboardApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self._server: BaseWSGIServer = make_server(host, port, app, threaded=True)
        self.port = self._server.server_port
        self.base = f"http://{host}:{self.port}"
        self.url = f"{self.base}/?token={app.token}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="archdeploy-ui", daemon=True
        )
        self._thread.start()

    def run_url(self, run_id: str) -> str:
        return f"{self.base}/runs/{run_id}?token={self.app.token}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
