"""`archdeploy dev`, and `archdeploy up --endpoint`: the serverless topology from the CLI.

`dev` runs the three functions under functions-framework, fed by the Pub/Sub emulator's
push subscriptions, with the run store on the Firestore emulator (`shared.devserver.topology`),
until Ctrl-C or SIGTERM, which stop everything it started and exit 130 (143 for SIGTERM).
A `dev` that was killed outright is cleaned up after by the next one. The HTTP door
needs the bearer token `dev` prints (and writes to STATE_DIR/dev/http-token, 0600).
`up FILE --endpoint URL` POSTs the architecture to a dispatcher's HTTP function and
follows the run by polling `GET URL/runs/RUN_ID`, which answers the run's current record
wherever the run lives; for a loopback URL it reads that token file when
ARCHDEPLOY_HTTP_TOKEN is not set.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

import click
from pydantic import SecretStr
from rich.console import Console

from shared.errors import BackendError, UsageError
from shared.messages import DeployRequest, RunResult

if TYPE_CHECKING:
    from shared.devserver.topology import DevTopology

err = Console(stderr=True, highlight=False)
HTTP_TIMEOUT = 30.0  # seconds per request
FETCH_ATTEMPTS = 5  # consecutive failed polls before giving up
TOKEN_FILE = "http-token"  # in STATE_DIR/dev, as `shared.devserver.topology` writes it
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@click.command()
@click.option("--project", default="archdeploy-dev", show_default=True, help="Emulated project.")
@click.option(
    "--logs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the functions' JSON log lines go (default: STATE_DIR/dev/logs).",
)
@click.pass_context
def dev(ctx: click.Context, project: str, logs_dir: Path | None) -> None:
    """Run the serverless topology here: emulators, push subscriptions, the three functions.

    Ctrl-C stops the functions, the services they deployed and the emulators.
    """
    from shared.devserver.topology import DevTopology

    state_dir = ctx.meta.get("state_dir") or Path(
        os.environ.get("ARCHDEPLOY_STATE_DIR") or ".archdeploy"
    )
    state_dir = Path(state_dir) / "dev"
    topo = DevTopology(state_dir=state_dir, project=project, logs_dir=logs_dir)
    err.print("starting the emulators and the functions ...")
    code = 0
    received: list[int] = []
    with _interrupts_as_keyboard_interrupt(received):
        try:
            topo.start()
            _print_endpoints(topo)
            code = _wait_until_a_child_exits(topo)
        except KeyboardInterrupt:
            err.print("stopping ...")
            code = 128 + (received[0] if received else signal.SIGINT)
        finally:
            with _ignoring_interrupts():
                topo.stop()
    err.print("stopped: nothing left running")
    ctx.exit(code)


def _print_endpoints(topo: DevTopology) -> None:
    topics = topo.topics
    called = {
        "dispatcher": f"push from {topics['requests']}",
        "dispatcher-http": "POST a DeployRequest, GET /runs/RUN_ID",
        "worker": f"push from {topics['tasks']}",
        "aggregator": f"push from {topics['completions']}",
        "sweep": f"every {topo.sweep_interval:g}s" if topo.sweep_interval else "never called",
        "webhook": "GitHub push deliveries (point a webhook here, e.g. through a tunnel)",
    }
    if topo.stopped_leftovers:
        left = ", ".join(topo.stopped_leftovers)
        err.print(f"a previous `archdeploy dev` died without stopping: stopped its {left}")
    click.echo(f"archdeploy dev: project {topo.project}")
    for name, url in topo.urls.items():
        click.echo(f"  {name:<16} {url:<26} {called.get(name, '')}")
    click.echo(f"  {'pubsub emulator':<16} {topo.pubsub_host}")
    click.echo(f"  {'firestore':<16} {topo.firestore_host}")
    click.echo(f"  {'logs':<16} {topo.logs_dir}")
    click.echo(f"  {'state':<16} {topo.state_dir}")
    click.echo(f"  {'sources':<16} source_root must be inside {topo.source_base}")
    token = topo.http_token if "http_token" in topo.generated else "(ARCHDEPLOY_HTTP_TOKEN)"
    click.echo(f"  {'http token':<16} {token}  (also in {topo.token_path}, 0600)")
    secret = "(ARCHDEPLOY_WEBHOOK_SECRET)"
    if "webhook_secret" in topo.generated:
        secret = topo.webhook_secret
    click.echo(f"  {'webhook secret':<16} {secret}")
    click.echo(f"deploy:  archdeploy up examples/architecture.yaml --endpoint {topo.http_url}")
    click.echo(
        f"inspect: FIRESTORE_EMULATOR_HOST={topo.firestore_host} ARCHDEPLOY_STORE=firestore "
        f"ARCHDEPLOY_PROJECT={topo.project} archdeploy runs"
    )
    click.echo("Ctrl-C stops everything.")


def _wait_until_a_child_exits(topo: DevTopology) -> int:
    while True:
        time.sleep(0.5)
        for child in topo.exited():
            err.print(f"[bold red]{child.name} exited[/] (code {child.process.returncode}):")
            err.print(child.output(), markup=False)
            return 1


@contextlib.contextmanager
def _interrupts_as_keyboard_interrupt(received: list[int]) -> Iterator[None]:
    """SIGTERM (a supervisor, `kill`) stops the topology as Ctrl-C does. SIGINT is set
    too: a shell starts background jobs with it ignored, and `kill -INT` must still work.
    The signal is appended to `received`, for the exit code."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _ignoring_interrupts() -> Iterator[None]:
    """A second Ctrl-C must not cut the stopping short and leave processes behind."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# --- up --endpoint ----------------------------------------------------------------------


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
