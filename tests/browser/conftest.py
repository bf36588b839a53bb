"""Real runs of the example (embedded core, fake deployer) and a real Chromium to look at
their dashboard. A missing browser fails the suite and says what to install."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.local.sqlite_store import SqliteRunStore
from shared.bootstrap import embedded
from shared.deployer import Target
from shared.doors.dashboard.server import DashboardApp, Serving
from shared.messages import DeployRequest
from shared.settings import Settings
from tests.fakes import FakeDeployer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "architecture.yaml"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# A build error as long and as multi-line as a real one (pip's), to check it wraps.
LONG_ERROR = "pip install -r requirements.txt failed (exit 1):\n" + "\n".join(
    f"  ERROR: Could not find a version that satisfies the requirement enrich-lib-{i}==9.9 "
    f"(from versions: 0.1, 0.2, 0.3) while resolving /workspace/services/enrich/{'x' * 60}"
    for i in range(8)
)


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "Chromium not found: the browser tests need Debian's Chromium. Install it with "
            "`sudo apt-get install -y chromium` (or run `make test`, which does). "
            "Never `playwright install`.",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class GatedDeployer(FakeDeployer):
    """Builds of `held` block until `gate` is set; `entered` says one got there."""

    def __init__(self, held: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.held = held
        self.gate = threading.Event()
        self.entered = threading.Event()

    def build(self, service_name: str, spec: Any, *, target: Target | None = None) -> str:
        if service_name == self.held:
            self.entered.set()
            assert self.gate.wait(60), "the test never opened the gate"
        return super().build(service_name, spec, target=target)


@dataclass
class Runs:
    store: SqliteRunStore
    succeeded: str
    failed: str
    running: str
    gate: threading.Event
    finished: threading.Event


def _request(key: str) -> DeployRequest:
    return DeployRequest(architecture_uri=str(EXAMPLE), requested_by="cli", idempotency_key=key)


def _run(store: SqliteRunStore, tmp: Path, deployer: FakeDeployer, key: str, **knobs: Any) -> str:
    system = embedded(Settings(state_dir=tmp, **knobs), deployer=deployer, store=store)
    try:
        run_id = system.submit(_request(key)).run_id
        system.wait(run_id, timeout=60)
    finally:
        system.bus.close()
    return run_id


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    """Three runs of the example: succeeded, failed build, and one held in progress."""
    store = SqliteRunStore(tmp_path / "runs.db")
    ok = _run(store, tmp_path, FakeDeployer(build_seconds=0.3, deploy_seconds=0.2), "ok")
    bad = FakeDeployer(build_seconds=0.05, fail_build={"enrich": LONG_ERROR})
    failed = _run(store, tmp_path, bad, "failed")
    # The runs above left their build times in the store, and a cap admits the longest
    # first: make the held run's order known (director, then ingest, then the others).
    done = store.get_run(ok)
    assert done is not None
    store.record_durations(done.project_id, {"build:director": 1000.0, "build:ingest": 500.0})
    held = GatedDeployer("ingest", build_seconds=0.2, deploy_seconds=0.2)
    system = embedded(Settings(state_dir=tmp_path, build_concurrency=1), deployer=held, store=store)
    running = system.submit(_request("held")).run_id
    finished = threading.Event()

    def _wait() -> None:
        system.wait(running, timeout=60)
        finished.set()

    waiter = threading.Thread(target=_wait, daemon=True)
    waiter.start()
    assert held.entered.wait(30), "the held build never started"
    try:
        yield Runs(store, ok, failed, running, held.gate, finished)
    finally:
        held.gate.set()
        waiter.join(60)
        system.bus.close()
        store.close()


@pytest.fixture
def dashboard(runs: Runs) -> Iterator[Serving]:
    serving = Serving(DashboardApp(runs.store))
    try:
        yield serving
    finally:
        serving.close()


@pytest.fixture
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: build/screenshots (gitignored), kept as test artifacts."""
    out = Path(__file__).resolve().parents[2] / "build" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out
