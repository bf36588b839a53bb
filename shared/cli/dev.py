"""`archdeploy dev`: the serverless topology from the CLI.

`dev` runs the three functions under functions-framework, fed by the Pub/Sub emulator's
push subscriptions, with the run store on the Firestore emulator (`shared.devserver.topology`),
until Ctrl-C or SIGTERM, which stop everything it started and exit 130 (143 for SIGTERM).
A `dev` that was killed outright is cleaned up after by the next one. The HTTP door
needs the bearer token `dev` prints (and writes to STATE_DIR/dev/http-token, 0600);
`archdeploy up --endpoint` is its client, in `shared.cli.remote`, and reads that file
for a loopback URL when ARCHDEPLOY_HTTP_TOKEN is not set.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from shared.cli.lazy_console import lazy_console

if TYPE_CHECKING:
    from shared.devserver.topology import DevTopology

err = lazy_console(stderr=True, highlight=False)


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
    import signal

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

    import signal

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _ignoring_interrupts() -> Iterator[None]:
    """A second Ctrl-C must not cut the stopping short and leave processes behind."""
    import signal

    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
