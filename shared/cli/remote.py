"""`archdeploy up` against functions deployed elsewhere (Google Cloud, `archdeploy dev`).

`--endpoint URL` POSTs the request to the dispatcher's HTTP function and follows the run
by polling `GET URL/runs/RUN_ID`, which answers the run's current record wherever the run
lives. On the Pub/Sub bus, the request is published on the requests topic and the run
followed in the store.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import click
from pydantic import SecretStr
from rich.console import Console

from shared.architecture.model import Architecture, ServiceSpec
from shared.deployer import ContainerDeployer, Target, targeting
from shared.errors import BackendError, UsageError
from shared.messages import DeployRequest, RunResult

HTTP_TIMEOUT = 30.0  # seconds per request
FETCH_ATTEMPTS = 5  # consecutive failed polls before giving up
TOKEN_FILE = "http-token"  # in STATE_DIR/dev, as `shared.devserver.topology` writes it
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def up_over_pubsub(settings: Any, request: DeployRequest) -> RunResult:
    """Publish the request on the requests topic and follow the run in the store, as the
    deployed functions (or `archdeploy dev`'s) run it. Sources must be readable by the
    workers: a pushed commit, `gs://`, or a filesystem they share (dev)."""
    from shared.bootstrap import make_bus, make_store
    from shared.cli.progress import follow
    from shared.core.dispatcher import run_id_for
    from shared.messages import TOPIC_REQUESTS

    key = request.idempotency_key or f"cli-{uuid.uuid4().hex}"
    request = request.model_copy(update={"idempotency_key": key})
    make_bus(settings).publish(TOPIC_REQUESTS, request, attributes={"kind": "request"})
    run_id = run_id_for(key)
    Console(stderr=True, highlight=False).print(
        f"run {run_id} published to {settings.topic_requests} ({settings.project})"
    )
    store = make_store(settings)
    await_run(store, run_id)
    return follow(store, run_id, stream=sys.stderr, timeout=settings.run_deadline_seconds)


def await_run(store: Any, run_id: str, timeout: float = 60.0) -> None:
    """The dispatcher creates the run when it gets the message: wait for it to appear."""
    deadline = time.monotonic() + timeout
    while store.get_run(run_id) is None:
        if time.monotonic() > deadline:
            raise UsageError(
                f"run {run_id} was published but no dispatcher created it in "
                f"{timeout:g}s: is the dispatcher function subscribed?"
            )
        time.sleep(0.2)


def up_over_http(
    endpoint: str,
    request: DeployRequest,
    token: SecretStr | None = None,
    *,
    stream: IO[str] | None = None,
) -> RunResult:
    """Submit `request` to the dispatcher at `endpoint` and follow the run to its end.

    The request's `source_root` is a path on this machine: the dispatcher's workers must
    share its files, as `archdeploy dev`'s do.
    """
    secret = token.get_secret_value() if token else dev_token(endpoint)
    return submit_and_follow(endpoint, request, stream=stream or sys.stderr, token=secret)


def dev_token(endpoint: str, state_dir: Path | None = None) -> str | None:
    """The token `archdeploy dev` wrote, for a dispatcher on this machine only."""
    if (urllib.parse.urlsplit(endpoint).hostname or "") not in _LOOPBACK:
        return None
    if state_dir is None:
        ctx = click.get_current_context(silent=True)
        meta_dir = ctx.find_root().meta.get("state_dir") if ctx else None
        state_dir = Path(meta_dir or os.environ.get("ARCHDEPLOY_STATE_DIR") or ".archdeploy")
    try:
        return (state_dir / "dev" / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def submit_and_follow(
    endpoint: str, request: DeployRequest, *, stream: IO[str], token: str | None = None
) -> RunResult:
    status, body = _call(endpoint, "POST", token, request.model_dump_json().encode())
    if status != 202 or not isinstance(body, dict) or "run_id" not in body:
        raise UsageError(f"{endpoint} refused the request (HTTP {status}): {_why(body)}")
    run_id = str(body["run_id"])
    Console(file=stream, highlight=False).print(f"run {run_id} submitted to {endpoint}")
    return follow_http(endpoint, run_id, stream=stream, token=token)


def follow_http(
    endpoint: str,
    run_id: str,
    *,
    stream: IO[str],
    token: str | None = None,
    interval: float = 0.3,
    timeout: float | None = None,
) -> RunResult:
    """Show the run, polling `GET endpoint/runs/RUN_ID`, until it ends (or `timeout`)."""
    url = f"{endpoint.rstrip('/')}/runs/{urllib.parse.quote(run_id)}"
    from shared.cli.progress import follow_view

    return follow_view(
        lambda: fetch_run(url, token), stream=stream, interval=interval, timeout=timeout
    )


def fetch_run(url: str, token: str | None = None) -> RunResult:
    """The run's current record; retries a few transient failures, then raises BackendError."""
    for attempt in range(1, FETCH_ATTEMPTS + 1):
        try:
            status, body = _call(url, "GET", token)
        except UsageError:
            if attempt == FETCH_ATTEMPTS:
                raise
        else:
            if status == 200:
                return RunResult.model_validate(body)
            if status < 500 or attempt == FETCH_ATTEMPTS:
                raise BackendError(f"GET {url}: HTTP {status}: {_why(body)}")
        time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def _call(url: str, method: str, token: str | None, data: bytes | None = None) -> tuple[int, Any]:
    """(HTTP status, JSON body or text); raises UsageError when nothing answers."""
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _opener(url).open(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, _decode(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, _decode(exc.read())
    except OSError as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise UsageError(
            f"cannot reach {url}: {reason} (is the dispatcher running? `archdeploy dev` starts one)"
        ) from None


def _opener(url: str) -> urllib.request.OpenerDirector:
    # A dispatcher on this machine must not be reached through a proxy meant for the internet.
    local = (urllib.parse.urlsplit(url).hostname or "") in _LOOPBACK
    return urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if local else []))


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode(errors="replace").strip()


def _why(body: Any) -> str:
    if not isinstance(body, dict):
        return str(body)[:500] or "(no body)"
    problems = body.get("problems") or []
    lines = [f"{p.get('path')}: {p.get('message')}" for p in problems if isinstance(p, dict)]
    return "; ".join([str(body.get("error", body)), *lines])


def tear_down(
    deployer: ContainerDeployer,
    architecture: Architecture,
    services: Sequence[ServiceSpec],
    *,
    say: Callable[[str], None],
) -> str:
    """Delete each service where `up` deployed it: the file's project, and the service's
    region (else the file's), not archdeploy's own project. Returns the summary line."""
    for spec in services:
        region = (spec.deployment.region if spec.deployment else "") or architecture.region
        with targeting(Target(project_id=architecture.project_id, region=region)):
            deployer.teardown(spec.name)
        say(f"  {spec.name:<24} deleted ({architecture.project_id}, {region})")
    return f"{len(services)} services torn down"
