"""The dashboard's routes, independent of the server that carries them.

`route(method, path, store, prefix)` answers `(body, status, headers)`, the shape the
HTTP door returns: `archdeploy ui` serves it on loopback (`server`), and the `api`
function mounts it under `/ui` (IAM-authenticated on Google Cloud).

    GET /                    the runs list          GET /live             its live part
    GET /runs/RUN_ID         a run's page           GET /runs/RUN_ID/live its live part
    GET /runs/RUN_ID.json    the run's view model   GET /static/NAME      the JS and CSS
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from typing import Any

from shared.doors.dashboard import pages
from shared.doors.dashboard.view import load_run, load_runs
from shared.ports import RunStore

log = logging.getLogger(__name__)

Response = tuple[str, int, dict[str, str]]
_RUN_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HTML = {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}
_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}
# The pages load only their own script and style; nothing from elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def route(method: str, path: str, store: RunStore, prefix: str = "") -> Response:
    """Answer one dashboard request; `path` is what follows `prefix` in the URL."""
    if method not in ("GET", "HEAD"):
        return _text(405, f"method {method} not allowed: the dashboard is read-only")
    path = "/" + path.strip("/")
    if path.startswith("/static/"):
        return _static(path.removeprefix("/static/"))
    if path == "/":
        return pages.runs_page(load_runs(store), prefix), 200, _html()
    if path == "/live":
        return pages.runs_live(load_runs(store), prefix), 200, _html()
    if not path.startswith("/runs/"):
        return _text(404, f"no page {path}: the dashboard has / and /runs/RUN_ID")
    return _run(path.removeprefix("/runs/"), store, prefix)


def _run(rest: str, store: RunStore, prefix: str) -> Response:
    run_id, live, as_json = rest, False, False
    if rest.endswith("/live"):
        run_id, live = rest.removesuffix("/live"), True
    elif rest.endswith(".json"):
        run_id, as_json = rest.removesuffix(".json"), True
    if not _RUN_ID.fullmatch(run_id):
        return _text(400, "not a run id: run ids look like r-0123456789abcdef")
    view = load_run(store, run_id)
    if view is None:
        return _text(404, f"no run {run_id!r}: the runs list is at {prefix}/")
    if as_json:
        body = json.dumps(dataclasses.asdict(view), default=str)
        return body, 200, {"Content-Type": "application/json", "Cache-Control": "no-store"}
    render = pages.run_live if live else pages.run_page
    return render(view, prefix), 200, _html()


def _static(name: str) -> Response:
    text = pages.asset(name)
    if text is None:
        return _text(404, f"no static file {name!r}")
    kind = _TYPES[name.rpartition(".")[2]]
    return text, 200, {"Content-Type": kind, "Cache-Control": "max-age=300", **SECURITY_HEADERS}


def _html() -> dict[str, str]:
    return {**_HTML, **SECURITY_HEADERS}


def _text(status: int, message: str) -> Response:
    return message + "\n", status, {"Content-Type": "text/plain; charset=utf-8"}


def handle(request: Any, store: RunStore, prefix: str) -> Response:
    """Serve a Flask/Werkzeug request whose path starts with `prefix` (the HTTP door's
    mount); a store failure is logged and answered 503, never with a traceback."""
    path = request.path.removeprefix(prefix)
    try:
        return route(request.method, path, store, prefix)
    except Exception:  # the boundary: a page must not answer with a stack trace
        log.error("dashboard request %s failed", request.path, exc_info=True)
        return _text(503, "the run store did not answer: see the logs, then reload")
