"""The dispatcher's HTTP door: what the console's test tab, `curl` and the CLI send.

`POST` a DeployRequest as JSON, or the architecture as raw YAML (`Content-Type`
decides; query parameters `dataflow` (repeatable), `director_url`, `source_root`,
`environment`, `idempotency_key`, `build_only` complete it): `202 {"run_id": ...}`.
`GET /runs/RUN_ID` (or `GET /?run_id=`): the run's current record; `GET /` (or `/runs`):
recent runs; `POST /runs/RUN_ID/cancel`: cancel it. Routes are `ROUTES`, a werkzeug map.
`GET /ui/`: the dashboard's pages (`shared.doors.dashboard`).

With `ARCHDEPLOY_HTTP_TOKEN` set, every call needs `Authorization: Bearer <token>`
(on Google Cloud, IAM guards the function instead; `archdeploy dev` always sets one).
Browser origins and local `source_root` folders are checked by `shared.doors.http_guard`.
Every refusal is JSON `{"error": ..., "problems": [{"path", "line", "message", "fix"}]}`:
400 bad input (an inline architecture without `source_root` too), 401 no token, 403 a
foreign `Origin` or a `source_root` outside the allowed folder, 404 unknown run, 405
method, 413 body over `MAX_BODY_BYTES`, 415 content type (JSON or YAML only), 502/503 a
backend failed (503: try again), 500 a bug (details in the logs only).
"""

from __future__ import annotations

import difflib
import hmac
import json
import logging
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule

from shared.core.control import cancel_run
from shared.core.dispatcher import dispatch_request
from shared.core.runtime import Runtime, run_view
from shared.doors.dashboard import app as dashboard
from shared.doors.http_guard import Forbidden, check_origin, check_source_root
from shared.errors import ArchitectureError, BackendError, UsageError
from shared.locations import SCHEMES, scheme_of
from shared.logs import http_trace_labels, log_context
from shared.messages import DeployRequest

log = logging.getLogger(__name__)

# Pub/Sub allows 10 MB, but an architecture file is capped at 1 MiB by validation; a
# request is that file plus a few fields.
MAX_BODY_BYTES = 1_200_000
# Only types a browser cannot send cross-origin without a CORS preflight (not text/plain).
_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
_QUERY_FIELDS = {
    "dataflow": "dataflows",
    "director_url": "director_url",
    "source_root": "source_root",
    "environment": "environment",
    "idempotency_key": "idempotency_key",
    "build_only": "build_only",
}
_RUN_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_CHUNK = 65536
_BEARER = {"WWW-Authenticate": "Bearer"}
# `<path:...>` so a run id with a slash reaches the id check (and gets its 400 and fix).
ROUTES = Map(
    [
        Rule("/", endpoint="list_or_read", methods=["GET"]),
        Rule("/runs", endpoint="list_or_read", methods=["GET"]),
        Rule("/runs/<path:run_id>", endpoint="read", methods=["GET"]),
        Rule("/", endpoint="deploy", methods=["POST"]),
        Rule("/runs/<path:run_id>/cancel", endpoint="cancel", methods=["POST"]),
        Rule("/ui", endpoint="ui", methods=["GET"]),
        Rule("/ui/<path:page>", endpoint="ui", methods=["GET"]),
    ],
    strict_slashes=False,
)

Response = tuple[str, int, dict[str, str]]


class Refused(Exception):
    """An answer other than 2xx, with the problems that explain it."""

    def __init__(
        self, status: int, error: str, problems: list[dict[str, Any]] | None = None, **headers: str
    ) -> None:
        super().__init__(error)
        body = {"error": error, "problems": problems or []}
        self.response: Response = (
            json.dumps(body, default=str),
            status,
            {"Content-Type": "application/json", **headers},
        )


def problem(path: str, message: str, fix: str = "", line: int | None = None) -> dict[str, Any]:
    return {"path": path, "line": line, "message": message, "fix": fix}


def _json(body: Any, status: int, **headers: str) -> Response:
    return json.dumps(body, default=str), status, {"Content-Type": "application/json", **headers}


def read_body(request: Any, limit: int) -> bytes | None:
    """The raw body, or None when it is longer than `limit` (read no further than that)."""
    if (request.content_length or 0) > limit:
        return None
    chunks, total = [], 0
    while chunk := request.stream.read(_CHUNK):
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def authorized(request: Any, token: str | None) -> bool:
    """With a token configured, require `Authorization: Bearer <token>` (constant-time)."""
    if not token:
        return True
    given = request.headers.get("Authorization", "").encode("utf-8", "replace")
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def handle(
    request: Any,
    rt: Runtime,
    *,
    token: str | None = None,
    source_base: Path | None = None,
    origins: tuple[str, ...] = (),
) -> Response:
    """Answer one request. A local `source_root` must resolve inside `source_base`
    (default: the working directory); `Origin` must be the door's own or in `origins`."""
    with log_context(**http_trace_labels(request.headers)):
        return _answer(request, rt, token, source_base or Path.cwd(), origins)


def _answer(
    request: Any, rt: Runtime, token: str | None, source_base: Path, origins: tuple[str, ...]
) -> Response:
    try:
        check_origin(request, origins)
        return _route(request, rt, token, source_base)
    except Refused as refused:
        return refused.response
    except Forbidden as exc:
        return Refused(exc.status, str(exc), [problem(exc.field, str(exc), exc.fix)]).response
    except ArchitectureError as exc:
        problems = [problem(p.path, p.message, p.fix, p.line) for p in exc.problems]
        return Refused(400, "invalid architecture", problems).response
    except UsageError as exc:
        return Refused(400, str(exc)).response
    except BackendError as exc:
        log.warning("HTTP request failed in a backend: %s", exc)
        status, hint = (503, "try again shortly") if exc.retryable else (502, "see the logs")
        return Refused(status, f"{exc} ({hint})").response
    except Exception:  # the boundary: a bug must not answer with a stack trace
        log.error("HTTP request failed unexpectedly", exc_info=True)
        return Refused(500, "internal error: the function's logs have the details").response


def _route(request: Any, rt: Runtime, token: str | None, source_base: Path) -> Response:
    if not authorized(request, token):
        fix = "send `Authorization: Bearer <ARCHDEPLOY_HTTP_TOKEN>`"
        bad = problem("Authorization", "missing or wrong bearer token", fix)
        raise Refused(401, "missing or wrong bearer token", [bad], **_BEARER)
    if request.method not in ("GET", "POST"):
        raise Refused(
            405, f"method {request.method} not allowed: use GET or POST", Allow="GET, POST"
        )
    try:
        endpoint, params = ROUTES.bind("", path_info=request.path).match(method=request.method)
    except NotFound:
        fix = "POST / to deploy; GET / or /runs/RUN_ID; POST /runs/RUN_ID/cancel; GET /ui/"
        raise Refused(
            404, f"no route {request.path[:200]!r}", [problem("", "no route", fix)]
        ) from None
    except MethodNotAllowed as exc:
        allowed = ", ".join(sorted(set(exc.valid_methods or ()) & {"GET", "POST"}))
        raise Refused(
            405, f"method {request.method} not allowed: use {allowed}", Allow=allowed
        ) from None
    if endpoint == "ui":
        return dashboard.handle(request, rt.store, prefix="/ui")
    if endpoint == "cancel":
        return _cancel(request, rt, params["run_id"])
    if endpoint == "read":
        return _get_run(request, rt, request.args.get("run_id") or params["run_id"])
    if endpoint == "list_or_read":
        return _get_run(request, rt, request.args.get("run_id", ""))
    return _deploy(request, rt, source_base)


def _deploy(request: Any, rt: Runtime, source_base: Path) -> Response:
    body = read_body(request, MAX_BODY_BYTES)
    if body is None:
        fix = "architecture files are capped at 1 MiB: send the file, not a bundle"
        error = f"body larger than {MAX_BODY_BYTES} bytes"
        raise Refused(413, error, [problem("", error, fix)])
    deploy = _request_from(request, body)
    check_source_root(deploy, source_base)
    run = dispatch_request(deploy, rt, record_invalid=False)
    log.info("run %s accepted over HTTP", run.run_id)
    body_out = {"run_id": run.run_id, "status": run.status.value}
    return _json(body_out, 202, Location=f"/runs/{run.run_id}")


def _request_from(request: Any, body: bytes) -> DeployRequest:
    content_type = (request.mimetype or "").lower()
    if content_type == "application/json":
        deploy = _validated(_json_object(body))
    elif content_type in _YAML_TYPES:
        deploy = _validated(_yaml_fields(request, body))
    else:
        fix = "send application/json (a DeployRequest) or application/yaml (the architecture)"
        message = f"Content-Type {content_type or '(none)'} not supported"
        raise Refused(415, message, [problem("Content-Type", message, fix)])
    uri = deploy.architecture_uri
    if uri is not None and scheme_of(uri) not in SCHEMES:
        fix = "send the file's text instead, or a gs://BUCKET/OBJECT or github:// URI"
        message = "a path on the function's own disk is not read over HTTP"
        raise Refused(400, "invalid request", [problem("architecture_uri", message, fix)])
    return deploy


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except RecursionError:
        raise Refused(400, "JSON nested too deeply", [problem("", "nested too deeply")]) from None
    except json.JSONDecodeError as exc:
        fix = "send one JSON object: a DeployRequest"
        bad = problem("", f"not valid JSON: {exc.msg} (column {exc.colno})", fix, exc.lineno)
        raise Refused(400, "body is not valid JSON", [bad]) from None
    except ValueError as exc:  # not UTF-8, or a number too long to read
        raise Refused(400, "body is not valid JSON", [problem("", str(exc)[:200])]) from None
    if not isinstance(data, dict):
        fix = 'e.g. {"architecture": "project_id: ...", "dataflows": ["orders"]}'
        raise Refused(400, "body must be a JSON object", [problem("", "not an object", fix)])
    data.setdefault("requested_by", "http")
    return data


def _yaml_fields(request: Any, body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        bad = problem("", f"not UTF-8 text: byte {exc.start}", "save the file as UTF-8", line)
        raise Refused(400, "invalid architecture", [bad]) from None
    args = request.args
    known = list(_QUERY_FIELDS)
    if unknown := [_unknown(name, known, "query") for name in args if name not in known]:
        raise Refused(400, "invalid request", unknown)
    fields: dict[str, Any] = {"architecture": text, "requested_by": "http"}
    for name, field in _QUERY_FIELDS.items():
        if name == "dataflow":
            fields[field] = args.getlist(name)
        elif name in args:
            fields[field] = args.get(name) or None
    return fields


def _validated(data: dict[str, Any]) -> DeployRequest:
    known = list(DeployRequest.model_fields)
    problems = [_unknown(key, known, "body") for key in data if key not in known]
    try:
        deploy = DeployRequest.model_validate(data)
    except ValidationError as exc:
        problems += [_field_problem(error) for error in exc.errors(include_url=False)]
    except RecursionError:
        problems.append(problem("", "nested too deeply"))
    if problems:
        raise Refused(400, "invalid request", problems)
    return deploy


def _unknown(key: str, known: list[str], where: str) -> dict[str, Any]:
    close = difflib.get_close_matches(key, known, n=1)
    fix = f"did you mean `{close[0]}`?" if close else f"known: {', '.join(known)}"
    name = key[:60]
    return problem(name, f"unknown {'parameter' if where == 'query' else 'field'} `{name}`", fix)


def _field_problem(error: Any) -> dict[str, Any]:
    path = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    field = DeployRequest.model_fields.get(str(error["loc"][0])) if error["loc"] else None
    fix = f"`{path}`: {field.description}" if field and field.description else ""
    return problem(path, message, fix)


def _cancel(request: Any, rt: Runtime, run_id: str) -> Response:
    """`POST /runs/RUN_ID/cancel`: stop the run; what already deployed stays listed."""
    if not _RUN_ID.fullmatch(run_id):
        fix = "POST /runs/RUN_ID/cancel, with the id the POST answered"
        raise Refused(400, "not a run id", [problem("run_id", "not a run id", fix)])
    who = request.headers.get("X-Requested-By", "") or "http"
    run = cancel_run(run_id, rt, by=who[:100])
    if run is None:
        raise Refused(404, f"no run {run_id!r}", [problem("run_id", "unknown run", "")])
    return _json(
        {"run_id": run_id, "status": run.status.value, "cancelled_by": run.cancelled_by}, 202
    )


def _get_run(request: Any, rt: Runtime, run_id: str) -> Response:
    if not run_id:
        runs = [r.model_dump(mode="json") for r in rt.store.list_runs(20)]
        return _json({"runs": runs}, 200)
    if not _RUN_ID.fullmatch(run_id):
        fix = "run ids look like `r-0123456789abcdef`, as the POST answered"
        raise Refused(400, "not a run id", [problem("run_id", "not a run id", fix)])
    result = run_view(rt.store, run_id)
    if result is None:
        fix = "GET / lists the recent runs"
        raise Refused(404, f"no run {run_id!r}", [problem("run_id", "unknown run", fix)])
    return _json(result.model_dump(mode="json"), 200)
