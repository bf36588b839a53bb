"""The dashboard at scale and in the docs: 30 services fit a laptop screen; the example's
run page with a failed deploy is the README's screenshot; a missing browser fails."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.local.sqlite_store import SqliteRunStore
from shared.doors.dashboard.server import DashboardApp, Serving
from shared.messages import DeployRequest
from tests.browser import conftest
from tests.browser.conftest import EXAMPLE, _run
from tests.builders import wide
from tests.fakes import FakeDeployer

LAPTOP = {"width": 1366, "height": 768}
# What a failed Cloud Run deploy says; long enough to wrap.
DEPLOY_ERROR = (
    "deploying ingest: Cloud Run revision ingest-00007-xuv is not ready: container failed to "
    "start and listen on PORT=8080 within the allocated timeout.\n"
    "  Logs: https://console.cloud.google.com/logs/viewer?project=archdeploy-demo"
    "&resource=cloud_run_revision/service_name/ingest/revision_name/ingest-00007-xuv\n"
    "  Traceback (most recent call last):\n"
    '    File "/app/main.py", line 12, in <module>\n'
    "      from registration import register\n"
    "  ModuleNotFoundError: No module named 'registration'"
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteRunStore]:
    store = SqliteRunStore(tmp_path / "runs.db")
    yield store
    store.close()


def _serve(browser: Any, store: SqliteRunStore, run_id: str) -> tuple[Serving, Any]:
    serving = Serving(DashboardApp(store))
    page = browser.new_page(viewport=LAPTOP)
    page.goto(f"{serving.run_url(run_id)}")
    return serving, page


def test_thirty_services_fit_a_laptop_screen(
    browser: Any, store: SqliteRunStore, tmp_path: Path, screenshots: Path
) -> None:
    arch = wide(30, director=True)
    deployer = FakeDeployer(build_seconds=0.02, deploy_seconds=0.02)
    request = DeployRequest(architecture=arch.model_dump_json(), source_root=str(tmp_path))
    run_id = _run_request(store, tmp_path, deployer, request)
    serving, page = _serve(browser, store, run_id)
    try:
        assert page.locator(".tl-row").count() == 31
        timeline = page.locator(".timeline").bounding_box()
        assert timeline["y"] + timeline["height"] <= LAPTOP["height"]
        assert page.evaluate("document.documentElement.scrollWidth") <= LAPTOP["width"]
        page.screenshot(path=str(screenshots / "thirty.png"))
    finally:
        page.close()
        serving.close()


def _run_request(
    store: SqliteRunStore, tmp: Path, deployer: FakeDeployer, request: DeployRequest
) -> str:
    from shared.bootstrap import embedded
    from shared.settings import Settings

    system = embedded(Settings(state_dir=tmp), deployer=deployer, store=store)
    try:
        run_id = system.submit(request).run_id
        system.wait(run_id, timeout=60)
    finally:
        system.bus.close()
    return run_id


def test_the_example_with_a_failed_deploy_makes_the_readme_screenshot(
    browser: Any, store: SqliteRunStore, tmp_path: Path, screenshots: Path
) -> None:
    deployer = FakeDeployer(build_seconds=0.4, deploy_seconds=0.3, fail_deploy={"ingest": ""})
    deployer.fail_deploy["ingest"] = DEPLOY_ERROR.removeprefix("deploying ingest: ")
    run_id = _run(store, tmp_path, deployer, "docs")
    serving, page = _serve(browser, store, run_id)
    try:
        rows = page.locator(".tl-row")
        assert rows.count() == 4
        enrich = page.locator(".tl-row[data-service='enrich'] .tl-note").inner_text()
        assert enrich == "skipped: dependency ingest did not deploy"
        outcomes = page.locator(".tl-row[data-service='ingest'] .bar").evaluate_all(
            "bs => bs.map(b => b.dataset.phase + ':' + b.dataset.outcome)"
        )
        assert outcomes == ["build:succeeded", "deploy:failed"]
        assert page.locator("details.error[data-service='ingest'] pre").inner_text() == DEPLOY_ERROR
        page.screenshot(path=str(screenshots / "dashboard.png"), full_page=True)
    finally:
        page.close()
        serving.close()


def test_a_missing_chromium_fails_the_suite_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("chromium") is None
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        conftest.chromium_path()


assert EXAMPLE.exists()
