"""Incremental runs and rollback in the core, on the FakeDeployer's IncrementalDeployer:
the worker reuses what is unchanged (`_reusable`) and rolls back (`_roll_back`), and the
aggregator opens the rollback phase for what a failed run changed."""

from __future__ import annotations

from typing import Any

from shared.architecture.model import Architecture
from shared.core.dispatcher import dispatch_request
from shared.core.handlers import subscribe_all
from shared.core.runtime import Runtime
from shared.deployer import IncrementalDeployer, is_incremental, submits_builds
from shared.messages import DeployRequest, Phase, RunResult, RunStatus, TaskStatus
from tests.builders import architecture, service
from tests.fakes import FakeBus, FakeDeployer, FakeRunStore


class System:
    def __init__(self) -> None:
        self.store = FakeRunStore()
        self.bus = FakeBus()
        self.deployer = FakeDeployer()
        self.rt = Runtime(store=self.store, bus=self.bus, deployer=self.deployer)
        subscribe_all(self.bus, self.rt)

    def run(self, arch: Architecture, **request: Any) -> RunResult:
        run = dispatch_request(
            DeployRequest(architecture=arch.model_dump_json(), **request), self.rt
        )
        self.bus.deliver_all()
        result = self.store.get_result(run.run_id)
        assert result is not None, "the run never finished"
        return result

    def reused(self, result: RunResult, phase: Phase) -> set[str]:
        return {t.service for t in self.store.get_tasks(result.run_id, phase) if t.reused}


def two_services(**env: str) -> Architecture:
    return architecture(
        {"flow": [service("api", environment_vars=env), service("web", "api")]}, director=False
    )


def test_the_fake_deployer_is_an_incremental_deployer() -> None:
    assert isinstance(FakeDeployer(), IncrementalDeployer)


def test_the_worker_s_ability_checks_answer_as_isinstance_does_asked_again() -> None:
    class Plain:
        def build(self, service_name: str, spec: object) -> str:
            return "image"

    for _ in range(2):  # the second answer comes from the per-class cache
        assert is_incremental(FakeDeployer()) and not submits_builds(FakeDeployer())
        assert not is_incremental(Plain()) and not is_incremental(None)


def test_an_unchanged_architecture_is_neither_rebuilt_nor_redeployed() -> None:
    system = System()
    first = system.run(two_services())
    builds, deploys = len(system.deployer.built), len(system.deployer.deploys)

    second = system.run(two_services())

    assert first.status is second.status is RunStatus.SUCCEEDED
    assert (len(system.deployer.built), len(system.deployer.deploys)) == (builds, deploys)
    assert (
        system.reused(second, Phase.BUILD)
        == system.reused(second, Phase.DEPLOY)
        == {
            "api",
            "web",
        }
    )
    assert second.urls == first.urls and second.images == first.images


def test_only_what_changed_is_redeployed_and_no_cache_redoes_everything() -> None:
    system = System()
    system.run(two_services())

    changed = system.run(two_services(LOG_LEVEL="debug"))

    assert system.reused(changed, Phase.BUILD) == {"api", "web"}  # same sources
    assert system.reused(changed, Phase.DEPLOY) == {"web"}  # api's environment changed
    forced = system.run(two_services(LOG_LEVEL="debug"), no_cache=True)
    assert system.reused(forced, Phase.BUILD) == system.reused(forced, Phase.DEPLOY) == set()


def test_a_failed_deploy_rolls_back_what_the_run_changed_to_what_served_before() -> None:
    # Given api and web serving their first revisions
    system = System()
    system.run(two_services())
    before = dict(system.deployer.serving)
    # When a run changes both, api deploys, web's deploy fails, and the run asked for rollback
    system.deployer.fail_deploy["web"] = "quota exceeded"
    env = {"LOG_LEVEL": "debug"}
    changed = architecture(
        {
            "flow": [
                service("api", environment_vars=env),
                service("web", "api", environment_vars=env),
            ]
        },
        director=False,
    )
    failed = system.run(changed, rollback_on_failure=True)
    # Then both serve their first revisions again: api replaced, web perhaps half-replaced
    assert failed.status is RunStatus.FAILED
    assert sorted(system.deployer.rolled_back) == [
        ("api", before["api"].revision),
        ("web", before["web"].revision),
    ]
    assert system.deployer.serving == before
    rollbacks = {t.service: t for t in system.store.get_tasks(failed.run_id, Phase.ROLLBACK)}
    assert rollbacks["api"].status is rollbacks["web"].status is TaskStatus.SUCCEEDED
    assert rollbacks["api"].previous == before["api"].revision


def test_nothing_is_rolled_back_that_this_run_did_not_change() -> None:
    # Given web served before and api is new to this deployer
    system = System()
    system.run(architecture({"flow": [service("web")]}, director=False))
    system.deployer.fail_deploy["api"] = "quota exceeded"
    # When a run deploys api (which fails) and web unchanged (reused), asking for rollback
    arch = architecture({"flow": [service("api"), service("web")]}, director=False)
    failed = system.run(arch, rollback_on_failure=True)
    # Then no rollback ran: web was reused and api served nothing before
    assert failed.status is RunStatus.FAILED
    assert system.deployer.rolled_back == []
    rollbacks = system.store.get_tasks(failed.run_id, Phase.ROLLBACK)
    assert {t.status for t in rollbacks} == {TaskStatus.WAITING}


def test_a_first_deploy_that_fails_has_nothing_to_roll_back() -> None:
    # Given a run whose deploy of a service that never served before fails half-way
    system = System()
    system.deployer.fail_deploy["api"] = "crashed on start"
    failed = system.run(two_services(), rollback_on_failure=True)
    # Then the run fails, and no rollback was attempted
    assert failed.status is RunStatus.FAILED
    assert system.deployer.rolled_back == []
