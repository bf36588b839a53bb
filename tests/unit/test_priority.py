"""Critical-path-first admission: priorities at planning, smoothed durations, the order
a cap releases tasks in, and the project's build slots (pure rule)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared import store_rules as rules
from shared.core.dispatcher import dispatch_request
from shared.core.handlers import subscribe_all
from shared.core.plan import plan_run
from shared.core.priority import DEFAULT_SECONDS, admission_order, prioritise
from shared.core.runtime import RunPolicy, Runtime
from shared.messages import DeployRequest, Phase, RunStatus, TaskRecord
from tests.builders import architecture, service, wide
from tests.fakes import FakeBus, FakeDeployer, FakeRunStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)

# a <- b <- c (each deploys after the one before), d alone, and the director.
CHAIN = architecture({"flow": [service("a"), service("b", "a"), service("c", "b"), service("d")]})
SECONDS = {
    "build:director": 1.0,
    "build:a": 10.0,
    "build:b": 50.0,
    "build:c": 30.0,
    "build:d": 40.0,
    "director:director": 4.0,
    "deploy:a": 5.0,
    "deploy:b": 7.0,
    "deploy:c": 3.0,
    "deploy:d": 20.0,
}


def _planned() -> list[TaskRecord]:
    return prioritise(plan_run(CHAIN, run_id="r-1").tasks, SECONDS)


def _order(tasks: list[TaskRecord], phase: Phase) -> list[str]:
    return [t.service for t in admission_order(t for t in tasks if t.phase is phase)]


def test_each_task_is_given_the_longest_remaining_path_from_its_start() -> None:
    tasks = {(t.phase, t.service): t.priority for t in _planned()}
    # Deploy chains: c=3, b=7+3, a=5+10, d=20; the director gates them all: 4+20.
    assert tasks[(Phase.DEPLOY, "c")] == 3.0
    assert tasks[(Phase.DEPLOY, "b")] == 10.0
    assert tasks[(Phase.DEPLOY, "a")] == 15.0
    assert tasks[(Phase.DEPLOY, "d")] == 20.0
    assert tasks[(Phase.DIRECTOR, "director")] == 24.0
    # Every deploy waits for every build (the deploy phase opens after them): build + 24.
    assert tasks[(Phase.BUILD, "b")] == 74.0
    assert tasks[(Phase.BUILD, "director")] == 25.0


def test_a_cap_admits_builds_longest_first_and_deploys_by_the_longest_chain() -> None:
    tasks = _planned()
    assert _order(tasks, Phase.BUILD) == ["b", "d", "c", "a", "director"]
    assert _order(tasks, Phase.DEPLOY) == ["d", "a", "b", "c"]


def test_never_seen_services_take_the_default_and_ties_keep_file_order() -> None:
    tasks = prioritise(plan_run(wide(4), run_id="r-1").tasks, {"build:svc-0002": 900.0})
    assert _order(tasks, Phase.BUILD) == ["svc-0002", "svc-0000", "svc-0001", "svc-0003"]
    first = next(t for t in tasks if t.service == "svc-0000" and t.phase is Phase.BUILD)
    assert first.priority == DEFAULT_SECONDS[Phase.BUILD] + DEFAULT_SECONDS[Phase.DEPLOY]


def test_a_chain_longer_than_the_recursion_limit_is_prioritised() -> None:
    names = [f"s{i}" for i in range(1500)]
    arch = architecture(
        {"f": [service(n, *([names[i - 1]] if i else [])) for i, n in enumerate(names)]},
        director=False,
    )
    tasks = prioritise(plan_run(arch, run_id="r-1").tasks, {})
    head = next(t for t in tasks if t.phase is Phase.DEPLOY and t.service == "s0")
    assert head.priority == 1500 * DEFAULT_SECONDS[Phase.DEPLOY]


def test_a_smoothed_duration_starts_at_the_first_sample_and_moves_a_third_of_the_way() -> None:
    assert rules.smoothed(None, 12.0) == 12.0
    assert rules.smoothed(10.0, 20.0) == pytest.approx(13.0)
    updated = rules.durations_updated({"build:a": 10.0, "build:b": 5.0}, {"build:a": 20.0})
    assert updated == {"build:a": 13.0, "build:b": 5.0}
    # One outlier does not make the estimate: ten ordinary runs bring it back.
    estimate = rules.smoothed(10.0, 100.0)
    for _ in range(10):
        estimate = rules.smoothed(estimate, 10.0)
    assert estimate == pytest.approx(10.0, abs=1.0)


class _System:
    def __init__(self, deployer: FakeDeployer | None = None, **policy: object) -> None:
        self.store, self.bus = FakeRunStore(), FakeBus()
        self.deployer = deployer or FakeDeployer()
        self.rt = Runtime(
            store=self.store,
            bus=self.bus,
            deployer=self.deployer,
            policy=RunPolicy(**policy),  # type: ignore[arg-type]
        )
        subscribe_all(self.bus, self.rt)

    def run(self, **request: object) -> str:
        run = dispatch_request(
            DeployRequest(architecture=CHAIN.model_dump_json(), **request),  # type: ignore[arg-type]
            self.rt,
        )
        self.bus.deliver_all()
        return run.run_id


def test_a_capped_run_builds_and_deploys_in_priority_order_from_stored_durations() -> None:
    system = _System(build_concurrency=1, deploy_concurrency=1)
    system.store.durations["acme-dev"] = dict(SECONDS)
    run_id = system.run()
    assert system.store.get_result(run_id).status is RunStatus.SUCCEEDED  # type: ignore[union-attr]
    assert [name for name, _ in system.deployer.built] == ["b", "d", "c", "a", "director"]
    deployed = [name for name, _, _ in system.deployer.deploys]
    assert deployed == ["director", "d", "a", "b", "c"]


def test_a_finished_run_leaves_its_durations_for_the_next_one_but_not_reused_work() -> None:
    system = _System()
    system.run()
    learned = system.store.get_durations("acme-dev")
    assert set(learned) == set(SECONDS)  # every build and deploy that did its work
    system.store.durations["acme-dev"] = {k: 99.0 for k in learned}
    system.run(idempotency_key="again")  # images reused, services unchanged: nothing learned
    assert set(system.store.get_durations("acme-dev").values()) == {99.0}


def test_build_slots_never_exceed_the_cap_and_an_expired_lease_is_taken_back() -> None:
    held, granted, freed = rules.slots_taken(
        {}, release=[], want=["a", "b", "c"], cap=2, lease_seconds=60, now=NOW
    )
    assert (granted, freed, sorted(held)) == (["a", "b"], 0, ["a", "b"])
    held, granted, freed = rules.slots_taken(
        held, release=[], want=["b", "c"], cap=2, lease_seconds=60, now=NOW
    )
    assert (granted, freed) == (["b"], 0)  # b keeps its one slot; c waits
    later = NOW + timedelta(seconds=61)  # a's run was killed: its lease lapses
    held, granted, freed = rules.slots_taken(
        held, release=["b"], want=["c", "d", "e"], cap=2, lease_seconds=60, now=later
    )
    assert (granted, freed, sorted(held)) == (["c", "d"], 1, ["c", "d"])


@pytest.mark.parametrize(("setting", "cap"), [(0, None), (12, 12)], ids=["off", "twelve"])
def test_the_project_build_cap_setting_reaches_the_policy(setting: int, cap: int | None) -> None:
    from shared.bootstrap import run_policy
    from shared.settings import Settings

    assert run_policy(Settings(project_build_cap=setting)).project_build_cap == cap


def test_a_run_waiting_for_the_projects_only_slot_is_woken_when_another_run_frees_it() -> None:
    # Given two runs of one project with a project build cap of 1: the second finds no slot
    store, bus = FakeRunStore(), FakeBus()
    policy = RunPolicy(project_build_cap=1)
    rt = Runtime(store=store, bus=bus, deployer=FakeDeployer(), policy=policy)
    subscribe_all(bus, rt)
    first, second = (
        dispatch_request(
            DeployRequest(architecture=wide(2).model_dump_json(), idempotency_key=key), rt
        ).run_id
        for key in ("first", "second")
    )
    assert [t.status.value for t in store.get_tasks(second, Phase.BUILD)] == ["waiting"] * 2
    # When only the bus delivers (no sweep ever runs)
    bus.deliver_all()
    # Then each freed slot woke the other run, and both finished
    for run_id in (first, second):
        assert store.get_result(run_id).status is RunStatus.SUCCEEDED  # type: ignore[union-attr]
    assert store.slots["acme-dev"] == {}
