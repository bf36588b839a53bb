"""`archdeploy ui`: the dashboard of embedded runs, on loopback, behind a token.

While it runs, its URL (with the token) sits in `STATE_DIR/ui.json`, readable by its
owner only (0600), so `archdeploy up` can print the run's dashboard link; the file goes
when `ui` stops.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import click

URL_FILE = "ui.json"


def write_url_file(state_dir: Path, base: str, token: str) -> Path:
    """Record where the dashboard listens, for `up`; created 0600 (it holds the token)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / URL_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"base": base, "token": token, "pid": os.getpid()}, out)
    return path


def dashboard_link(state_dir: Path, run_id: str) -> str | None:
    """The run's dashboard URL when `archdeploy ui` is running on this state dir, else None
    (no file, an unreadable one, or one left by a `ui` that died)."""
    try:
        data = json.loads((state_dir / URL_FILE).read_text())
        os.kill(int(data["pid"]), 0)
        return f"{data['base']}/runs/{run_id}?token={data['token']}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Default: a free one.")
@click.pass_context
def ui(ctx: click.Context, port: int) -> None:
    """Serve the dashboard of this machine's runs on 127.0.0.1 (Ctrl-C stops it).

    Open the printed URL: its token is exchanged for a cookie; other requests get 401."""
    from shared.bootstrap import make_store
    from shared.cli.main import _settings
    from shared.doors.dashboard.server import DashboardApp, Serving

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    settings = _settings(ctx)
    app = DashboardApp(make_store(settings))
    serving = Serving(app, port=port)
    path = write_url_file(settings.state_dir, serving.base, app.token)
    try:
        click.echo(f"archdeploy dashboard: {serving.url}", err=True)
        click.echo(serving.url)
        _wait_forever()
    finally:
        path.unlink(missing_ok=True)
        serving.close()


def _wait_forever() -> None:
    """Until Ctrl-C or SIGTERM; both unwind through `ui`'s `finally`."""
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    threading.Event().wait()


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(0)
