"""The dispatcher's HTTP door: what the console's test tab, `curl` and the CLI send.

`POST` a DeployRequest as JSON, or the architecture as raw YAML (`Content-Type`
decides; query parameters `dataflow`, `director_url`, `source_root`,
`idempotency_key` complete it): `202 {"run_id": ...}`. `GET /runs/RUN_ID` (or
`?run_id=`): the run's current record. Bad input is a 4xx naming the field and the fix.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from pydantic import ValidationError

from shared.errors import ArchitectureError, UsageError
from shared.handlers import Runtime, dispatch_request, run_view
from shared.messages import DeployRequest

log = logging.getLogger(__name__)

# Pub/Sub allows 10 MB, but an architecture file is capped at 1 MiB by validation; a
# request is that file plus a few fields.
MAX_BODY_BYTES = 1_200_000
_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")

Response = tuple[str, int, dict[str, str]]


def _json(body: Any, status: int) -> Response:
    return json.dumps(body, default=str), status, {"Content-Type": "application/json"}


def authorized(request: Any, token: str | None) -> bool:
    """With a token configured, require `Authorization: Bearer <token>` (constant-time)."""
    if not token:
        return True
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def handle(request: Any, rt: Runtime, *, token: str | None = None) -> Response:
    if not authorized(request, token):
        return _json({"error": "missing or wrong bearer token"}, 401)
    if request.method == "GET":
        return _get_run(request, rt)
    if request.method != "POST":
        return _json({"error": f"method {request.method} not allowed: use GET or POST"}, 405)
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return _json({"error": f"body larger than {MAX_BODY_BYTES} bytes"}, 413)
    body = request.get_data(cache=False)
    if len(body) > MAX_BODY_BYTES:
        return _json({"error": f"body larger than {MAX_BODY_BYTES} bytes"}, 413)
    try:
        deploy = _request_from(request, body)
        run = dispatch_request(deploy, rt, record_invalid=False)
    except ArchitectureError as exc:
        problems = [
            {"path": p.path, "line": p.line, "message": p.message, "fix": p.fix}
            for p in exc.problems
        ]
        return _json({"error": "invalid architecture", "problems": problems}, 400)
    except UsageError as exc:
        return _json({"error": str(exc)}, 400)
    log.info("run %s accepted over HTTP", run.run_id)
    return _json({"run_id": run.run_id, "status": run.status.value}, 202)


def _request_from(request: Any, body: bytes) -> DeployRequest:
    content_type = (request.mimetype or "").lower()
    args = request.args
    if content_type == "application/json":
        try:
            return DeployRequest.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(body)"
            raise UsageError(f"not a valid DeployRequest: {where}: {first['msg']}") from None
    if content_type in _YAML_TYPES:
        return DeployRequest(
            architecture=body.decode("utf-8", errors="replace"),
            dataflows=args.getlist("dataflow"),
            director_url=args.get("director_url") or None,
            source_root=args.get("source_root") or None,
            idempotency_key=args.get("idempotency_key") or None,
            requested_by="http",
        )
    raise UsageError(
        f"Content-Type {content_type or '(none)'} not supported: send application/json "
        "(a DeployRequest) or application/yaml (the architecture file)"
    )


def _get_run(request: Any, rt: Runtime) -> Response:
    path = request.path.rstrip("/")
    run_id = request.args.get("run_id") or (path.rsplit("/", 1)[-1] if "/runs/" in path else "")
    if not run_id:
        runs = [r.model_dump(mode="json") for r in rt.store.list_runs(20)]
        return _json({"runs": runs}, 200)
    result = run_view(rt.store, run_id)
    if result is None:
        return _json({"error": f"no run {run_id!r}"}, 404)
    return _json(result.model_dump(mode="json"), 200)
