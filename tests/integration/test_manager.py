"""The Go seed's contract, kept: DeploymentManager over the core on the in-process bus."""

from __future__ import annotations

import threading

import pytest

from shared.errors import DeploymentError
from shared.manager import DeploymentManager
from shared.messages import RunResult
from tests.builders import architecture, service
from tests.fakes import FakeDeployer


def _span(deployer: FakeDeployer, start: str, end: str) -> float:
    starts = [t for action, _, t in deployer.events if action == start]
    ends = [t for action, _, t in deployer.events if action == end]
    return max(ends) - min(starts)


def test_three_100ms_builds_finish_in_well_under_two_and_a_half_builds() -> None:
    arch = architecture(
        {"a": [service("one")], "b": [service("two"), service("three")]}, director=False
    )
    deployer = FakeDeployer(build_seconds=0.1)
    images = DeploymentManager(arch, deployer).build_all_services()
    assert sorted(images) == ["one", "three", "two"]
    # Sequential would be 0.3 s; the seed's bar is well under 2.5 builds.
    assert _span(deployer, "build-start", "build-end") < 0.25


def test_build_all_services_builds_every_dataflow_and_the_director() -> None:
    deployer = FakeDeployer()
    images = DeploymentManager(architecture(), deployer).build_all_services()
    assert sorted(images) == ["director", "enrich", "ingest", "notify"]
    assert deployer.deploys == []


def test_build_all_services_raises_one_error_listing_every_failed_build() -> None:
    # Every build is in flight before any fails (a barrier of the four), so both failures
    # happen and are reported, whatever the machine's load.
    deployer = FakeDeployer(
        build_gate=threading.Barrier(4), fail_build={"ingest": "boom", "notify": "bang"}
    )
    with pytest.raises(DeploymentError) as caught:
        DeploymentManager(architecture(), deployer).build_all_services()
    error = caught.value
    assert "2 services failed" in str(error)
    assert "ingest (build): building ingest: boom" in str(error)
    assert "notify (build): building notify: bang" in str(error)
    assert sorted(error.images) == ["director", "enrich"]
    assert isinstance(error.result, RunResult)


def test_builds_still_queued_when_one_fails_are_not_started() -> None:
    arch = architecture({"f": [service(f"s{i}") for i in range(6)]}, director=False)
    deployer = FakeDeployer(fail_build={"s0": "boom"})
    with pytest.raises(DeploymentError) as caught:
        DeploymentManager(arch, deployer, parallelism=1).build_all_services()
    skipped = [f for f in caught.value.failures if f.error.startswith("not started")]
    assert skipped, "with one worker, the builds queued behind the failure must not start"
    assert all("build of s0 failed" in f.error for f in skipped)
    assert len(deployer.built) + len(skipped) == 5


def test_deploy_application_services_deploys_one_dataflow_in_parallel_with_enriched_env() -> None:
    arch = architecture()
    deployer = FakeDeployer(deploy_seconds=0.1)
    manager = DeploymentManager(arch, deployer)
    images = {"ingest": "img/ingest@sha256:1", "enrich": "img/enrich@sha256:2"}
    urls = manager.deploy_application_services(
        "orders", {"ingest": "ingest@acme-dev.iam.gserviceaccount.com"}, images, "https://dir"
    )
    assert sorted(urls) == ["enrich", "ingest"]
    assert deployer.built == []  # the images were given
    calls = {name: (account, spec) for name, account, spec in deployer.deploys}
    assert calls["ingest"][0] == "ingest@acme-dev.iam.gserviceaccount.com"
    assert calls["ingest"][1].image == "img/ingest@sha256:1"
    assert calls["enrich"][1].environment_vars["SERVICE_DIRECTOR_URL"] == "https://dir"
    assert calls["enrich"][1].environment_vars["PROJECT_ID"] == "acme-dev"
    # The caller's architecture is untouched.
    assert arch.dataflows["orders"].services["enrich"].deployment.environment_vars == {}  # type: ignore[union-attr]


def test_independent_deploys_run_in_parallel() -> None:
    arch = architecture({"f": [service(f"s{i}") for i in range(5)]}, director=False)
    deployer = FakeDeployer(deploy_seconds=0.1)
    DeploymentManager(arch, deployer).deploy_application_services(
        "f", {}, {f"s{i}": f"img{i}" for i in range(5)}, "https://dir"
    )
    assert _span(deployer, "deploy-start", "deploy-end") < 0.3


def test_deploy_failures_raise_one_error_that_keeps_the_urls_that_deployed() -> None:
    arch = architecture({"f": [service("a"), service("b"), service("c")]}, director=False)
    deployer = FakeDeployer(fail_deploy={"a": "quota exceeded", "c": "image not found"})
    with pytest.raises(DeploymentError) as caught:
        DeploymentManager(arch, deployer).deploy_application_services(
            "f", {}, {"a": "i", "b": "i", "c": "i"}, "https://dir"
        )
    assert {f.service for f in caught.value.failures} == {"a", "c"}
    assert dict(caught.value.urls) == {"b": "https://b.fake.run"}
