"""Hostile scenarios for the embedded mode: the real CLI, as subprocesses, treated badly.

Every wait is bounded. `no_orphans` (autouse) fails a test that leaves a process behind
(one whose command line or working directory is in the test's tmp folder, or one that
carries the test's service marker), and kills it.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT = 90.0  # seconds: the longest any one command may take

# A tiny service: answers 200 and its environment (JSON) on every path, after SLOW_START
# seconds when set; ignores SIGTERM when IGNORE_TERM is set. Binds loopback only.
SERVICE = """\
import json, os, signal, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ignoring SIGTERM", flush=True)
time.sleep(float(os.environ.get("SLOW_START", "0")))

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({k: v for k, v in os.environ.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

# Double fork + setsid + chdir /: the server leaves the service's process group, session
# and folder.
DAEMON = """\
import os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.chdir("/")
        ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
    os._exit(0)
while True:
    time.sleep(1)
"""


def architecture(
    folder: Path,
    services: dict[str, str],
    *,
    project: str = "hostile",
    env: dict[str, dict[str, str]] | None = None,
    environments: str = "",
) -> Path:
    """Write `services` (name -> main.py) and an architecture naming them; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"project_id: {project}", "dataflows:", "  main:", "    services:"]
    for name, code in services.items():
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "main.py").write_text(code)
        values = json.dumps((env or {}).get(name, {}))
        lines.append(
            f"      {name}: {{deployment: {{source_path: {name}, environment_vars: {values}}}}}"
        )
    path = folder / "services.yaml"
    path.write_text("\n".join(lines) + "\n" + environments)
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHDEPLOY_")}
    env.update(ARCHDEPLOY_HEALTH_TIMEOUT_SECONDS="20", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "shared.cli.main", *args]


@dataclass
class Done:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def run_cli(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = CLI_TIMEOUT,
) -> Done:
    """Run the real CLI to its end (bounded) and return what it did."""
    proc = subprocess.run(
        command(*args),
        cwd=cwd or REPO,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    done = Done(proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in done.text, done.text
    return done


def start_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start the real CLI in the background (its own process group, for signals)."""
    proc = subprocess.Popen(
        command(*args),
        cwd=cwd or REPO,
        env=env or cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _STARTED.append(proc)
    return proc


_STARTED: list[subprocess.Popen[str]] = []


def stderr_has(proc: subprocess.Popen[str], text: str) -> bool:
    """Whether `proc` has written `text` to stderr so far (read without blocking; what
    is read is kept for `finish`)."""
    assert proc.stderr is not None
    ready, _, _ = select.select([proc.stderr], [], [], 0.1)
    if ready:
        chunk = os.read(proc.stderr.fileno(), 65536).decode()
        _SEEN[proc.pid] = _SEEN.get(proc.pid, "") + chunk
    return text in _SEEN.get(proc.pid, "")


_SEEN: dict[int, str] = {}


def finish(proc: subprocess.Popen[str], timeout: float = CLI_TIMEOUT) -> Done:
    out, err = proc.communicate(timeout=timeout)
    done = Done(proc.returncode, out, _SEEN.pop(proc.pid, "") + err)
    assert "Traceback" not in done.text, done.text
    return done


def wait_for(what: str, check: Callable[[], object], timeout: float = 30.0) -> object:
    """Poll `check` until it answers something true; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}")


def records(state: Path) -> list[dict[str, object]]:
    """Every service record (serving or starting) in the state folder."""
    paths = [*(state / "run").glob("*/*/*.json"), *(state / "run").glob("*/*/*/starting/*.json")]
    found = []
    for path in paths:
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return found


def get(url: str, timeout: float = 3.0) -> dict[str, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as answer:
        result: dict[str, str] = json.load(answer)
        return result


def answers(url: str) -> bool:
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=1.0):
            return True
    except OSError:
        return False


def kill_group(proc: subprocess.Popen[str], signum: int = signal.SIGKILL) -> None:
    os.killpg(proc.pid, signum)


def leftovers(root: Path) -> list[psutil.Process]:
    """Live processes tied to `root`: in their command line or working directory, or
    carrying the service marker of a state folder under `root` (a daemon that changed
    to / and renamed itself is still found)."""
    me = os.getpid()
    mine = str(root)
    state_ids = {
        hashlib.sha256(str(folder).encode()).hexdigest()[:12]
        for folder in [root, *root.rglob("*")]
        if folder.is_dir() and not folder.is_symlink()
    }
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == me or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(proc.cmdline())
            marker = proc.environ().get("ARCHDEPLOY_SERVICE_ID", "")
            if mine in cmdline or proc.cwd().startswith(mine) or marker[:12] in state_ids:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


@pytest.fixture(autouse=True)
def no_orphans(tmp_path: Path) -> Iterator[None]:
    """Fail a test that leaves processes of its tmp folder running, and kill them."""
    yield
    still = [proc for proc in _STARTED if proc.poll() is None]
    for proc in _STARTED:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    _STARTED.clear()
    if still:
        pytest.fail(f"archdeploy commands still running: {[p.args for p in still]}")
    left = leftovers(tmp_path)
    if not left:
        return
    described = []
    for proc in left:
        try:
            described.append(f"pid {proc.pid}: {' '.join(proc.cmdline())}")
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(left, timeout=5)
    pytest.fail("orphans left behind:\n  " + "\n  ".join(described))
