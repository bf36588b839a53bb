"""Case 12 (and the token of case 5): the real `archdeploy dev` as a subprocess.

It starts the webhook with the other functions, guards its HTTP door with a token it
prints and writes for `up --endpoint`, exits 130 on Ctrl-C, and when it is killed
outright (`kill -9`) the next `dev` leaves nothing of it running: no emulator, no
function, no deployed service. Each step is bounded in time; the scenario ends with a
scan for processes tied to its folder or descended from either `dev`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from shared.messages import RunResult, RunStatus
from tests.hostile.doors_support import (
    Seen,
    cli_env,
    descendants,
    kill_group,
    run_cli,
    wait_no_orphans,
)

START_TIMEOUT = 180.0  # seconds: two JVMs and six functions on a shared 2-core machine
SERVICE = """\
import http.server, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""
ARCHITECTURE = """\
project_id: archdeploy-dev
region: europe-west1
dataflows:
  hello:
    services:
      hello-dev:
        service_account: hello-sa
        deployment: {source_path: hello}
"""


class Dev:
    """One `archdeploy dev` in `folder`, its output in files, read as it comes."""

    def __init__(self, folder: Path, name: str) -> None:
        self.out, self.err = folder / f"{name}.out", folder / f"{name}.err"
        command = [sys.executable, "-m", "shared.cli.main", "--state-dir", "state", "dev"]
        command += ["--project", "archdeploy-dev"]
        with self.out.open("w") as stdout, self.err.open("w") as stderr:
            self.process = subprocess.Popen(
                command,
                cwd=folder,
                env=cli_env(folder),
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )

    def wait_ready(self) -> dict[str, str]:
        deadline = time.monotonic() + START_TIMEOUT
        while "Ctrl-C stops everything." not in self.out.read_text():
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.2)
        found = re.findall(r"^  (\S+(?: \S+)?)\s{2,}(\S+)", self.out.read_text(), re.M)
        return dict(found)

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()


def _http(url: str, data: bytes | None = None, **headers: str) -> tuple[int, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        url, data=data, headers=headers, method="POST" if data else "GET"
    )
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"null")


def _probe_doors(urls: dict[str, str], token: str, folder: Path) -> None:
    yaml = {"Content-Type": "application/yaml"}
    query = f"/?source_root={folder}"
    assert _http(urls["dispatcher-http"] + query, ARCHITECTURE.encode(), **yaml)[0] == 401
    foreign = {**yaml, "Authorization": f"Bearer {token}", "Origin": "https://evil.example"}
    assert _http(urls["dispatcher-http"] + query, ARCHITECTURE.encode(), **foreign)[0] == 403
    outside = {**yaml, "Authorization": f"Bearer {token}"}
    status, body = _http(urls["dispatcher-http"] + "/?source_root=/etc", b"x: 1", **outside)
    assert status == 403, body
    ping = {"X-GitHub-Event": "ping", "X-GitHub-Delivery": "d-1"}
    assert _http(urls["webhook"], b"{}", **ping)[0] == 401  # unsigned


@pytest.mark.timeout(900)
def test_dev_survives_kill_9_cleanly_and_exits_130_on_ctrl_c(tmp_path: Path) -> None:
    (tmp_path / "hello").mkdir()
    (tmp_path / "hello" / "main.py").write_text(SERVICE)
    (tmp_path / "services.yaml").write_text(ARCHITECTURE)
    first = Dev(tmp_path, "first")
    second: Dev | None = None
    known: list[Seen] = []
    try:
        # Given `dev`, up: six functions (the webhook among them), a token, a secret
        urls = first.wait_ready()
        assert {"dispatcher-http", "webhook", "worker", "sweep"} <= set(urls), first.output()
        token_file = tmp_path / "state" / "dev" / "http-token"
        token = token_file.read_text().strip()
        assert urls["http token"] == token and len(token) >= 20
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert len(urls["webhook secret"]) >= 20
        _probe_doors(urls, token, tmp_path)
        # And a service deployed through it by `up --endpoint`, which reads the token file
        up = run_cli(
            tmp_path,
            "--state-dir",
            "state",
            "up",
            "services.yaml",
            "--json",
            "--endpoint",
            urls["dispatcher-http"],
            timeout=300,
        )
        assert up.code == 0, up.output
        result = RunResult.model_validate_json(up.stdout)
        assert result.status is RunStatus.SUCCEEDED and set(result.urls) == {"hello-dev"}
        known = descendants(first.process.pid)
        assert len(known) >= 8, known  # 2 emulators, 6 functions, the service and more
        # When `dev` is killed outright
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(timeout=30)
        # And `dev` is started again on the same state
        second = Dev(tmp_path, "second")
        second.wait_ready()
        print(second.output())  # what the scenario saw, in the report of a failure
        # Then nothing of the first one is left: it died with it, or the second stopped it
        left = [s for s in known if _alive(s)]
        assert left == [], second.output()
        known += descendants(second.process.pid)
        # And Ctrl-C stops the second with 130 and leaves nothing behind
        second.process.send_signal(signal.SIGINT)
        code = second.process.wait(timeout=120)
        assert code == 130, second.output()
        assert "stopped: nothing left running" in second.output()
        assert "Traceback" not in first.output() + second.output()
    finally:
        for dev in (first, second):
            if dev is not None and dev.process.poll() is None:
                kill_group(dev.process)
    assert wait_no_orphans(tmp_path, known) == []


def _alive(seen: Seen) -> bool:
    import psutil

    try:
        process = psutil.Process(seen.pid)
        return process.create_time() == seen.created and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_second_dev_on_a_live_ones_state_is_refused(tmp_path: Path) -> None:
    first = Dev(tmp_path, "first")
    try:
        first.wait_ready()
        known = descendants(first.process.pid)
        again = run_cli(tmp_path, "--state-dir", "state", "dev", timeout=120)
        assert again.code == 2, again.output
        assert f"another `archdeploy dev` (pid {first.process.pid}) is running" in again.output
        assert "Traceback" not in again.output
        assert first.process.poll() is None  # the first one was left alone
        first.process.send_signal(signal.SIGINT)
        assert first.process.wait(timeout=120) == 130
    finally:
        if first.process.poll() is None:
            kill_group(first.process)
    assert wait_no_orphans(tmp_path, known) == []
