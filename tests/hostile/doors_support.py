"""What the doors/dev hostile scenarios share: the real CLI as a subprocess, the real doors
under functions-framework, signed webhook deliveries, and the scan for orphan processes."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import functions_framework
import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
DISPATCHER_MAIN = REPO_ROOT / "functions" / "dispatcher" / "main.py"
CLI_TIMEOUT = 120.0  # seconds for one CLI call, emulator start included
WEBHOOK_SECRET = "whsec-hostile-2b7e"
REPO = "acme/shop"

SERVICE_ARCHITECTURE = """\
project_id: acme-dev
region: europe-west1
dataflows:
  orders:
    services:
      svc:
        deployment:
          source_path: svc
"""


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHDEPLOY_")}
    env.update(ARCHDEPLOY_STATE_DIR=str(tmp_path / "state"), PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def run_cli(tmp_path: Path, *args: str, timeout: float = CLI_TIMEOUT, **env: str) -> CliResult:
    """`archdeploy ARGS` in `tmp_path`, bounded in time; the whole group is killed after."""
    command = [sys.executable, "-m", "shared.cli.main", *args]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=cli_env(tmp_path, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        kill_group(process)
    return CliResult(process.returncode, stdout, stderr)


def kill_group(process: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def assert_clean_failure(result: CliResult, code: int = 2) -> None:
    """A clear message, the exit code, and no traceback."""
    assert result.code == code, result.output
    assert "Traceback" not in result.output, result.output


# --- orphans ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    pid: int
    created: float
    command: str


def descendants(pid: int) -> list[Seen]:
    """Every live descendant of `pid`, with its creation time (to tell pid reuse apart)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [s for s in map(_seen, children) if s is not None]


def orphans(folder: Path, known: Iterable[Seen] = ()) -> list[str]:
    """Live processes tied to `folder` (cwd, command line or environment mentions it), and
    those of `known` still alive (same pid, same creation time), other than this one."""
    root = str(folder.resolve())
    me = os.getpid()
    found = {}
    for process in psutil.process_iter(["pid", "cwd", "cmdline", "environ", "status"]):
        info = process.info
        if info["pid"] == me or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        text = " ".join(
            [info["cwd"] or "", *(info["cmdline"] or []), *(info["environ"] or {}).values()]
        )
        if root in text:
            found[info["pid"]] = " ".join(info["cmdline"] or [])[:200]
    for seen in known:
        again = _seen_pid(seen.pid)
        if again is not None and again.created == seen.created:
            found[seen.pid] = seen.command
    return [f"{pid}: {command}" for pid, command in sorted(found.items())]


def wait_no_orphans(folder: Path, known: Iterable[Seen] = (), timeout: float = 30.0) -> list[str]:
    """Orphans left after `timeout` seconds (stopping processes take a moment to go)."""
    known = list(known)
    deadline = time.monotonic() + timeout
    while (left := orphans(folder, known)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _seen(process: psutil.Process) -> Seen | None:
    try:
        with process.oneshot():
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            return Seen(process.pid, process.create_time(), " ".join(process.cmdline())[:200])
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _seen_pid(pid: int) -> Seen | None:
    try:
        return _seen(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return None


# --- the doors under functions-framework ----------------------------------------------


def door_client(target: str) -> Any:
    """The real dispatcher function `target` (`dispatch_http`, `webhook`), in-process."""
    return functions_framework.create_app(target=target, source=str(DISPATCHER_MAIN)).test_client()


def push_payload(
    sha: str, *, before: str = "0" * 40, pushed_at: int | None = None
) -> dict[str, Any]:
    repository: dict[str, Any] = {"full_name": REPO, "private": True}
    if pushed_at is not None:
        repository["pushed_at"] = pushed_at
    return {
        "ref": "refs/heads/main",
        "before": before,
        "after": sha,
        "repository": repository,
        "pusher": {"name": "octocat"},
    }


def deliver(client: Any, payload: dict[str, Any], delivery: str) -> Any:
    """POST a push delivery, signed as GitHub signs it (the body only)."""
    body = json.dumps(payload).encode()
    signature = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": f"sha256={signature}",
    }
    return client.post("/", data=body, headers=headers, content_type="application/json")
