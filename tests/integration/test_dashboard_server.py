"""`archdeploy ui`'s server and token, the `api` function's `/ui` mount, the URL file
`up` reads, and `status --timeline`, over a real SQLite store."""

from __future__ import annotations

import http.cookiejar
import json
import os
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from werkzeug.test import Client, EnvironBuilder
from werkzeug.wrappers import Request

from shared.adapters.local.sqlite_store import SqliteRunStore
from shared.bootstrap import embedded
from shared.cli.main import cli
from shared.cli.ui import URL_FILE, dashboard_link, write_url_file
from shared.core.runtime import Runtime
from shared.doors import http_api
from shared.doors.dashboard.server import COOKIE, DashboardApp
from shared.messages import DeployRequest
from shared.settings import Settings
from tests.fakes import FakeBus, FakeDeployer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "architecture.yaml"


@pytest.fixture
def state(tmp_path: Path) -> tuple[Path, str]:
    """A state dir holding one finished run of the example (fake deployer)."""
    store = SqliteRunStore(tmp_path / "runs.db")
    system = embedded(Settings(state_dir=tmp_path), deployer=FakeDeployer(), store=store)
    try:
        run_id = system.submit(DeployRequest(architecture_uri=str(EXAMPLE))).run_id
        system.wait(run_id, timeout=60)
    finally:
        system.close()
    return tmp_path, run_id


def test_the_token_in_the_url_becomes_a_cookie_and_nothing_passes_without_it(
    state: tuple[Path, str],
) -> None:
    path, run_id = state
    store = SqliteRunStore(path / "runs.db")
    app = DashboardApp(store, token="s3cret")
    client = Client(app)
    assert client.get(f"/runs/{run_id}").status_code == 401
    assert client.get(f"/runs/{run_id}?token=wrong").status_code == 401
    answer = client.get(f"/runs/{run_id}?token=s3cret&x=1")
    assert answer.status_code == 303
    assert answer.headers["Location"] == f"/runs/{run_id}?x=1"  # the token leaves the URL
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}_80=s3cret") and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200 and "ingest" in page.get_data(as_text=True)
    store.close()


def test_two_dashboards_on_two_ports_keep_their_own_cookies(state: tuple[Path, str]) -> None:
    # Given two `archdeploy ui` on one host (browsers share cookies across ports)
    path, run_id = state
    store = SqliteRunStore(path / "runs.db")
    first, second = DashboardApp(store, token="one"), DashboardApp(store, token="two")
    browser = Client(first)
    # When the user opens the first, then the second
    browser.get("/?token=one", environ_overrides={"SERVER_PORT": "8001"})
    browser.application = second
    browser.get("/?token=two", environ_overrides={"SERVER_PORT": "8002"})
    # Then the first still lets the browser in
    browser.application = first
    again = browser.get(f"/runs/{run_id}", environ_overrides={"SERVER_PORT": "8001"})
    assert again.status_code == 200
    store.close()


def _request(path: str, **headers: str) -> Request:
    return Request(EnvironBuilder(path=path, method="GET", headers=headers).get_environ())


def test_the_api_function_serves_the_pages_under_ui_behind_its_own_auth(
    state: tuple[Path, str],
) -> None:
    path, run_id = state
    store = SqliteRunStore(path / "runs.db")
    rt = Runtime(store=store, bus=FakeBus(), deployer=FakeDeployer())
    body, status, headers = http_api.handle(_request(f"/ui/runs/{run_id}"), rt)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "/ui/static/dashboard.js" in body and f"/ui/runs/{run_id}/live" in body
    assert http_api.handle(_request("/ui/"), rt)[1] == 200
    assert http_api.handle(_request("/ui/static/dashboard.css"), rt)[1] == 200
    assert http_api.handle(_request("/ui/"), rt, token="t")[1] == 401
    authorized = _request("/ui/", Authorization="Bearer t")
    assert http_api.handle(authorized, rt, token="t")[1] == 200
    store.close()


def test_up_finds_the_dashboard_link_only_while_ui_runs(tmp_path: Path) -> None:
    assert dashboard_link(tmp_path, "r-1") is None
    file = write_url_file(tmp_path, "http://127.0.0.1:5000", "tok")
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert dashboard_link(tmp_path, "r-1") == "http://127.0.0.1:5000/runs/r-1?token=tok"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(file.read_text()) | {"pid": int(gone.stdout)}
    file.write_text(json.dumps(data))
    assert dashboard_link(tmp_path, "r-1") is None  # left behind by a ui that died


def test_status_timeline_draws_the_run_as_text(state: tuple[Path, str]) -> None:
    path, run_id = state
    result = CliRunner().invoke(cli, ["--state-dir", str(path), "status", "--timeline"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"run {run_id}  succeeded")
    rows = [line for line in lines if "|" in line and "deployed" in line]
    assert {row.split()[0] for row in rows} == {"director", "ingest", "enrich", "notify"}
    assert all("B" in row.split("|")[1] for row in rows)


def test_archdeploy_ui_prints_its_url_serves_with_the_token_and_cleans_up(
    state: tuple[Path, str],
) -> None:
    path, run_id = state
    command = [sys.executable, "-m", "shared.cli.main", "--state-dir", str(path), "ui"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and "/?token=" in url
        assert stat.S_IMODE((path / URL_FILE).stat().st_mode) == 0o600
        base = url.partition("/?")[0]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/runs/{run_id}", timeout=10)
        assert refused.value.code == 401
        refused.value.close()
        jar = urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        browser = urllib.request.build_opener(jar)
        with browser.open(url, timeout=10) as first:
            assert first.status == 200
        with browser.open(f"{base}/runs/{run_id}", timeout=10) as page:
            assert run_id in page.read().decode()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert not (path / URL_FILE).exists()
