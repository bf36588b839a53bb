"""Incremental runs on the embedded system: the real core with `LocalDeployer`, on a copy of
examples/. A repeated run builds and deploys only what changed; a failed run can put
what it replaced back."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.local.deployer import LocalDeployer
from shared.adapters.local.processes import processes_in
from shared.architecture.model import DeploymentSpec
from shared.bootstrap import embedded
from shared.deployer import IncrementalDeployer, config_fingerprint
from shared.errors import BackendError
from shared.messages import DeployRequest, RunResult, RunStatus
from shared.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SERVICES = ["director", "enrich", "ingest", "notify"]

# Answers every GET with the content of version.txt.
VERSION_SERVER = """\
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = open("version.txt", "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""
SHOP = """\
project_id: acme-dev
dataflows:
  shop:
    services:
      good: {deployment: {source_path: good}}
      bad: {deployment: {source_path: bad}}
      steady: {deployment: {source_path: steady}}
"""


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """The embedded state; afterwards every service is stopped and no process survives."""
    state = tmp_path / "state"
    yield state
    LocalDeployer(state).teardown_all()
    assert processes_in(tmp_path) == []


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of examples/ to change; returns its architecture file."""
    copy = tmp_path / "example"
    shutil.copytree(EXAMPLES, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy / "architecture.yaml"


def up(state: Path, architecture: Path, **options: Any) -> tuple[RunResult, float]:
    """One `archdeploy up` of `architecture` on the embedded system: (result, seconds)."""
    system = embedded(Settings(state_dir=state, health_timeout_seconds=20))
    try:
        started = time.monotonic()
        run = system.submit(DeployRequest(architecture_uri=str(architecture), **options))
        result = system.wait(run.run_id, timeout=120)
        return result, time.monotonic() - started
    finally:
        system.close()


def pids(state: Path) -> dict[str, int]:
    return {name: record["pid"] for name, record in LocalDeployer(state).running().items()}


def rebuilt(result: RunResult) -> list[str]:
    return sorted(name for name, s in result.services.items() if not s.image_reused)


def redeployed(result: RunResult) -> list[str]:
    return sorted(name for name, s in result.services.items() if not s.unchanged)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


def test_a_second_up_of_an_unchanged_architecture_builds_and_deploys_nothing(
    state: Path, example: Path
) -> None:
    # Given the example deployed once
    first, first_seconds = up(state, example)
    assert first.status is RunStatus.SUCCEEDED, first.errors
    assert rebuilt(first) == redeployed(first) == SERVICES
    running = pids(state)

    # When it is deployed again, unchanged
    second, second_seconds = up(state, example)

    # Then nothing was built or deployed: same images, same URLs, same processes
    print(f"\nfirst up {first_seconds:.2f}s, unchanged second up {second_seconds:.2f}s")
    assert second.status is RunStatus.SUCCEEDED, second.errors
    assert rebuilt(second) == redeployed(second) == []
    assert all(s.status == "unchanged" for s in second.services.values())
    assert second.images == first.images
    assert second.urls == first.urls
    assert pids(state) == running
    # And it took a small fraction of the first run's time
    assert second_seconds < 0.7 * first_seconds
    # And the services still answer
    registered = json.loads(get(second.urls["director"] + "/services"))["services"]
    assert sorted(registered) == ["enrich", "ingest", "notify"]


def test_a_changed_source_rebuilds_and_redeploys_only_that_service(
    state: Path, example: Path
) -> None:
    first, _ = up(state, example)
    running = pids(state)
    main = example.parent / "services" / "ingest" / "main.py"
    main.write_text(main.read_text() + "\n# a change\n")

    second, seconds = up(state, example)

    print(f"\none-source-change up {seconds:.2f}s")
    assert second.status is RunStatus.SUCCEEDED, second.errors
    # ingest keeps its URL (the front end's stable port), so enrich, handed INGEST_URL,
    # has nothing new to deploy: only ingest is rebuilt and redeployed
    assert second.urls == first.urls
    assert rebuilt(second) == ["ingest"]
    assert redeployed(second) == ["ingest"]
    assert second.images["ingest"] != first.images["ingest"]
    after = pids(state)
    assert after["ingest"] != running["ingest"]
    for name in ("director", "notify", "enrich"):
        assert after[name] == running[name], name


def test_a_changed_env_var_redeploys_only_that_service_without_rebuilding(
    state: Path, example: Path
) -> None:
    first, _ = up(state, example)
    running = pids(state)
    text = example.read_text()
    assert text.count("DEFAULT_CURRENCY: EUR") == 1
    example.write_text(text.replace("DEFAULT_CURRENCY: EUR", "DEFAULT_CURRENCY: USD"))

    second, _ = up(state, example)

    assert second.status is RunStatus.SUCCEEDED, second.errors
    assert rebuilt(second) == []
    assert redeployed(second) == ["enrich"]
    assert second.images == first.images
    after = pids(state)
    environ = Path(f"/proc/{after['enrich']}/environ").read_bytes().split(b"\0")
    assert b"DEFAULT_CURRENCY=USD" in environ
    assert {n: p for n, p in after.items() if n != "enrich"} == {
        n: p for n, p in running.items() if n != "enrich"
    }


def test_no_cache_rebuilds_and_redeploys_everything(state: Path, example: Path) -> None:
    first, _ = up(state, example)
    running = pids(state)

    second, _ = up(state, example, no_cache=True)

    assert second.status is RunStatus.SUCCEEDED, second.errors
    assert rebuilt(second) == redeployed(second) == SERVICES
    assert second.images == first.images  # rebuilt, and reproducible
    after = pids(state)
    assert all(after[name] != running[name] for name in SERVICES)


def shop(root: Path, versions: dict[str, str]) -> Path:
    """Three services answering GET with their version; "crash" makes one fail to start."""
    for name, version in versions.items():
        service = root / name
        service.mkdir(parents=True, exist_ok=True)
        (service / "version.txt").write_text(version)
        crash = "raise SystemExit('v2 cannot start: no config')\n"
        (service / "main.py").write_text(crash if version == "crash" else VERSION_SERVER)
    (root / "services.yaml").write_text(SHOP)
    return root / "services.yaml"


def test_a_failed_run_with_rollback_puts_back_what_it_replaced(state: Path, tmp_path: Path) -> None:
    # Given v1 of three services, deployed
    architecture = shop(tmp_path / "shop", {"good": "v1", "bad": "v1", "steady": "v1"})
    first, _ = up(state, architecture)
    assert first.status is RunStatus.SUCCEEDED, first.errors
    assert get(first.urls["good"]) == "v1"

    # When v2 changes `good`, breaks `bad` and leaves `steady` alone, with rollback asked for
    shop(tmp_path / "shop", {"good": "v2", "bad": "crash"})
    second, _ = up(state, architecture, rollback_on_failure=True)

    # Then the run failed on `bad`, and only `good`, whose deploy had replaced v1, was
    # rolled back (`bad` never replaced its v1; `steady` was not deployed at all)
    assert second.status is RunStatus.FAILED
    assert [e.service for e in second.errors] == ["bad"]
    assert "v2 cannot start" in second.errors[0].error
    # A failed rollout may already have replaced what served, so bad is put back too
    # (here its v1 never stopped: the rollback finds it serving and leaves it).
    assert second.rolled_back == ["bad", "good"]
    assert second.services["good"].status == "rolled back"
    assert second.services["steady"].unchanged
    # And good serves v1 again (on its v1 port, unless something took it meanwhile);
    # bad and steady never stopped serving v1
    running = LocalDeployer(state).running()
    assert sorted(running) == ["bad", "good", "steady"]
    assert get(running["good"]["url"]) == "v1"
    assert get(first.urls["bad"]) == get(first.urls["steady"]) == "v1"


def test_rolling_back_to_an_unknown_revision_names_the_service_and_revision(
    state: Path, tmp_path: Path
) -> None:
    deployer = LocalDeployer(state)
    assert isinstance(deployer, IncrementalDeployer)

    with pytest.raises(BackendError, match=r"rolling back good to good-0123456789ab: good has no"):
        deployer.rollback("good", "good-0123456789ab")


def test_a_deploy_records_its_fingerprint_and_teardown_deletes_its_history(
    state: Path, tmp_path: Path
) -> None:
    architecture = shop(tmp_path / "shop", {"good": "v1"})
    deployer = LocalDeployer(state, health_timeout=20)
    spec = DeploymentSpec(source_path=str(architecture.parent / "good"))
    image = deployer.build("good", spec)
    assert deployer.cached_image("good", spec) == image
    deployable = spec.model_copy(update={"image": image})
    url = deployer.deploy_service("good", "good-sa", deployable)

    current = deployer.deployed("good")

    assert current is not None
    assert (current.url, current.image) == (url, image)
    assert current.fingerprint == config_fingerprint("good-sa", deployable)
    saved = json.loads(
        (deployer.service_dir("good") / "history" / f"{current.revision}.json").read_text()
    )
    assert (saved["image"], saved["service_account"]) == (image, "good-sa")
    deployer.teardown("good")
    assert deployer.deployed("good") is None
    assert not deployer.service_dir("good").exists()
