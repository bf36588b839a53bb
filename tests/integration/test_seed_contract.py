"""A deployer written to the Go seed's four-method contract works unchanged.

The seed's `ContainerDeployer` has `build`, `deploy_service`, `build_and_deploy` and
`teardown`, with no keyword arguments, and fails a service by raising. Such a deployer must
work with `DeploymentManager` and with the embedded runtime, and its failures must be
reported per service, logged as expected outcomes (WARNING, no traceback).
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from shared.architecture.model import DeploymentSpec
from shared.bootstrap import embedded
from shared.deployer import ContainerDeployer, current_target
from shared.errors import DeploymentError
from shared.manager import DeploymentManager
from shared.messages import DeployRequest, RunStatus
from shared.settings import Settings
from tests.builders import architecture, service


class SeedDeployer:
    """Exactly the seed's methods and signatures: a user's code, not ours."""

    def __init__(
        self,
        *,
        build_seconds: float = 0.0,
        broken: set[str] | None = None,
        together: threading.Barrier | None = None,
    ) -> None:
        self.build_seconds = build_seconds
        self.together = together  # builds wait here until all are in flight
        self.broken = broken or set()
        self.lock = threading.Lock()
        self.builds: list[tuple[str, float, float]] = []  # service, start, end
        self.deploys: dict[str, DeploymentSpec] = {}
        self.targets: dict[str, str] = {}

    def build(self, service_name, spec):  # type: ignore[no-untyped-def]
        start = time.monotonic()
        time.sleep(self.build_seconds)
        if self.together is not None:
            self.together.wait(timeout=30)
        if service_name in self.broken:
            raise RuntimeError(f"compiler exploded on {service_name}")
        with self.lock:
            self.builds.append((service_name, start, time.monotonic()))
            self.targets[service_name] = current_target().task_id
        return f"registry.example/{service_name}:v1"

    def deploy_service(self, service_name, service_account_email, spec):  # type: ignore[no-untyped-def]
        if service_name in self.broken:
            raise RuntimeError(f"no quota for {service_name}")
        with self.lock:
            self.deploys[service_name] = spec
        return f"https://{service_name}.example.run"

    def build_and_deploy(self, service_name, service_account_email, spec):  # type: ignore[no-untyped-def]
        image = self.build(service_name, spec)
        return self.deploy_service(
            service_name, service_account_email, spec.model_copy(update={"image": image})
        )

    def teardown(self, service_name):  # type: ignore[no-untyped-def]
        return None


def test_a_seed_deployer_is_a_container_deployer() -> None:
    assert isinstance(SeedDeployer(), ContainerDeployer)


def test_three_100ms_builds_through_a_seed_deployer_run_in_parallel() -> None:
    arch = architecture(
        {"a": [service("one")], "b": [service("two"), service("three")]}, director=False
    )
    deployer = SeedDeployer(build_seconds=0.1)

    images = DeploymentManager(arch, deployer).build_all_services()

    assert images == {s: f"registry.example/{s}:v1" for s in ("one", "two", "three")}
    span = max(end for *_, end in deployer.builds) - min(start for _, start, _ in deployer.builds)
    assert span < 0.25  # sequential is 0.3 s
    # The task's target reaches a deployer that asks for it, without a keyword argument.
    assert all(task.endswith(f":build:{name}") for name, task in deployer.targets.items())


def test_seed_deployer_failures_are_aggregated_and_keep_what_succeeded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    arch = architecture({"f": [service("good"), service("bad"), service("worse")]}, director=False)
    # Every build is in flight before any fails, so both failures happen and are reported.
    deployer = SeedDeployer(broken={"bad", "worse"}, together=threading.Barrier(3))

    with caplog.at_level(logging.INFO), pytest.raises(DeploymentError) as caught:
        DeploymentManager(arch, deployer).build_all_services()

    error = caught.value
    assert dict(error.images) == {"good": "registry.example/good:v1"}
    causes = {f.service: f.error for f in error.failures}
    assert causes == {
        "bad": "RuntimeError: compiler exploded on bad",
        "worse": "RuntimeError: compiler exploded on worse",
    }
    failed = [r for r in caplog.records if "compiler exploded" in r.getMessage()]
    assert failed and all(r.levelno == logging.WARNING and not r.exc_info for r in failed)


def test_deploy_application_services_with_a_seed_deployer_enriches_env_and_aggregates() -> None:
    arch = architecture(
        {"orders": [service("ingest"), service("enrich", "ingest"), service("bad")]},
        director=False,
    )
    deployer = SeedDeployer(broken={"bad"})
    images = {"ingest": "img/ingest:1", "enrich": "img/enrich:1", "bad": "img/bad:1"}

    with pytest.raises(DeploymentError) as caught:
        DeploymentManager(arch, deployer).deploy_application_services(
            "orders", {"ingest": "ingest@p.iam.gserviceaccount.com"}, images, "https://dir"
        )

    assert dict(caught.value.urls) == {
        "ingest": "https://ingest.example.run",
        "enrich": "https://enrich.example.run",
    }
    assert [(f.service, f.error) for f in caught.value.failures] == [
        ("bad", "RuntimeError: no quota for bad")
    ]
    env = deployer.deploys["enrich"].environment_vars
    assert env["SERVICE_DIRECTOR_URL"] == "https://dir"
    assert env["PROJECT_ID"] == "acme-dev"


def test_the_embedded_runtime_takes_a_seed_deployer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    arch = architecture({"f": [service("one"), service("two", "one")]}, director=False)
    system = embedded(Settings(state_dir=tmp_path), deployer=SeedDeployer())
    try:
        request = DeployRequest(architecture=arch.model_dump_json(), source_root=str(tmp_path))
        result = system.wait(system.submit(request).run_id)
    finally:
        system.bus.close()
    assert result.status is RunStatus.SUCCEEDED
    assert result.urls == {"one": "https://one.example.run", "two": "https://two.example.run"}
