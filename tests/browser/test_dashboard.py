"""The dashboard, loaded in Chromium over real runs of the example."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from shared.doors.dashboard.server import Serving
from tests.browser.conftest import Runs

SERVICES = {"director", "ingest", "enrich", "notify"}


def _open(browser: Any, serving: Serving, path: str = "/") -> Any:
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(f"{serving.base}{path}{'&' if '?' in path else '?'}token={serving.app.token}")
    return page


def _bars(page: Any, service: str) -> list[tuple[str, str]]:
    row = page.locator(f".tl-row[data-service='{service}'] .bar")
    return [(b.get_attribute("data-phase"), b.get_attribute("data-outcome")) for b in row.all()]


def _note(page: Any, service: str) -> str:
    return str(page.locator(f".tl-row[data-service='{service}'] .tl-note").inner_text())


def test_the_runs_list_shows_each_run_with_its_trigger_and_counts(
    browser: Any, dashboard: Serving, runs: Runs, screenshots: Path
) -> None:
    page = _open(browser, dashboard)
    rows = page.locator("tr.run")
    assert rows.count() == 3
    text = page.locator("table").inner_text()
    for run_id in (runs.succeeded, runs.failed, runs.running):
        assert run_id in text
    assert "succeeded" in text and "failed" in text and "running" in text
    assert "CLI" in text
    page.screenshot(path=str(screenshots / "runs.png"), full_page=True)
    page.close()


def test_a_succeeded_run_has_one_row_per_service_with_build_and_deploy_bars(
    browser: Any, dashboard: Serving, runs: Runs, screenshots: Path
) -> None:
    page = _open(browser, dashboard, f"/runs/{runs.succeeded}")
    names = set(page.locator(".tl-row").evaluate_all("rs => rs.map(r => r.dataset.service)"))
    assert names == SERVICES
    assert _bars(page, "director") == [("build", "succeeded"), ("director", "succeeded")]
    assert _bars(page, "enrich") == [("build", "succeeded"), ("deploy", "succeeded")]
    assert page.locator("#run-status").inner_text() == "succeeded"
    assert "fake.registry/enrich@sha256:" in page.locator("tr[data-service='enrich']").inner_text()
    assert "https://enrich.fake.run" in page.locator("tr[data-service='enrich']").inner_text()
    # Outcomes read without colour: each bar says what it is.
    bar = page.locator(".tl-row[data-service='enrich'] .bar").first
    assert bar.inner_text() == "✓ build"
    page.screenshot(path=str(screenshots / "succeeded.png"), full_page=True)
    page.close()


def test_a_failed_build_shows_its_error_in_full_and_why_the_others_stopped(
    browser: Any, dashboard: Serving, runs: Runs, screenshots: Path
) -> None:
    from tests.browser.conftest import LONG_ERROR

    page = _open(browser, dashboard, f"/runs/{runs.failed}")
    assert page.locator("#run-status").inner_text() == "failed"
    assert ("build", "failed") in _bars(page, "enrich")
    error = page.locator("details.error[data-service='enrich'] pre")
    assert error.is_visible()
    assert error.inner_text() == f"building enrich: {LONG_ERROR}"
    # Wrapped, not a horizontal scroll: the block is no wider than its box.
    assert error.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
    assert error.evaluate("e => getComputedStyle(e).fontFamily").lower().find("mono") >= 0
    assert _note(page, "ingest") == "skipped: build of enrich failed"
    assert _note(page, "enrich") == "build failed: see its error"
    page.screenshot(path=str(screenshots / "failed.png"), full_page=True)
    page.close()


def test_a_run_in_progress_updates_live_without_a_reload(
    browser: Any, dashboard: Serving, runs: Runs, screenshots: Path
) -> None:
    # Given a run whose build of ingest is held, and a build cap of 2
    page = _open(browser, dashboard, f"/runs/{runs.running}")
    assert page.locator("#run-status").inner_text() == "running"
    assert ("build", "running") in _bars(page, "ingest")
    assert _note(page, "enrich") == "held by the build cap"
    assert _note(page, "director") == "waiting on the builds"
    page.evaluate("window.__same_page = true")
    page.screenshot(path=str(screenshots / "running.png"), full_page=True)
    # When the build is let go and the run finishes
    runs.gate.set()
    assert runs.finished.wait(60)
    # Then the page shows it, without having reloaded
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=15000)
    assert page.evaluate("window.__same_page === true")
    assert _bars(page, "ingest") == [("build", "succeeded"), ("deploy", "succeeded")]
    page.screenshot(path=str(screenshots / "finished.png"), full_page=True)
    page.close()


def test_without_the_token_the_dashboard_answers_401(
    browser: Any, dashboard: Serving, runs: Runs
) -> None:
    page = browser.new_page()
    answer = page.goto(f"{dashboard.base}/runs/{runs.succeeded}")
    assert answer.status == 401
    assert "archdeploy ui" in page.inner_text("body")
    page.close()
