"""The event-driven core driven through fakes: dispatcher, worker and aggregator."""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Iterator

import pytest

from shared.architecture.model import Architecture
from shared.core.dispatcher import dispatch_request, run_id_for
from shared.core.handlers import on_completion, subscribe_all
from shared.core.publishing import STORED, attributes
from shared.core.runtime import Runtime
from shared.messages import (
    TOPIC_COMPLETIONS,
    TOPIC_RESULTS,
    DeployRequest,
    Phase,
    RunFinished,
    RunResult,
    RunStatus,
    TaskCompletion,
    TaskRecord,
    TaskStatus,
    utcnow,
)
from tests.builders import architecture, service
from tests.fakes import FakeBus, FakeDeployer, FakeRunStore


class System:
    def __init__(self, deployer: FakeDeployer | None = None) -> None:
        self.store = FakeRunStore()
        self.bus = FakeBus()
        self.deployer = deployer or FakeDeployer()
        self.rt = Runtime(store=self.store, bus=self.bus, deployer=self.deployer)
        subscribe_all(self.bus, self.rt)

    def run(
        self,
        arch: Architecture,
        *,
        duplicate: bool = False,
        shuffle: random.Random | None = None,
        **request: object,
    ) -> RunResult:
        req = DeployRequest(architecture=arch.model_dump_json(), **request)  # type: ignore[arg-type]
        run = dispatch_request(req, self.rt)
        self.bus.deliver_all(duplicate=duplicate, shuffle=shuffle)
        result = self.store.get_result(run.run_id)
        assert result is not None, "the run never finished"
        return result


def test_a_run_builds_then_deploys_everything_and_records_every_image_and_url() -> None:
    system = System()
    result = system.run(architecture())
    assert result.status is RunStatus.SUCCEEDED
    assert sorted(result.images) == ["director", "enrich", "ingest", "notify"]
    assert sorted(result.urls) == ["director", "enrich", "ingest", "notify"]
    assert all("@sha256:" in image for image in result.images.values())
    assert result.errors == []
    assert result.services["enrich"].status == "deployed"


def test_deploys_get_the_directors_url_and_the_built_image() -> None:
    system = System()
    result = system.run(architecture())
    specs = {name: spec for name, _, spec in system.deployer.deploys}
    assert specs["ingest"].environment_vars["SERVICE_DIRECTOR_URL"] == result.urls["director"]
    assert specs["ingest"].environment_vars["DATAFLOW_NAME"] == "orders"
    assert specs["ingest"].image == result.images["ingest"]
    assert "SERVICE_DIRECTOR_URL" not in specs["director"].environment_vars


def test_the_director_deploys_first_and_dependencies_deploy_in_order() -> None:
    system = System()
    system.run(architecture())
    order = system.deployer.deployed_names()
    assert order[0] == "director"
    assert order.index("ingest") < order.index("enrich")


def test_a_dataflow_filter_deploys_only_that_dataflow() -> None:
    system = System()
    result = system.run(architecture(), dataflows=["notifications"])
    assert sorted(system.deployer.deployed_names()) == ["director", "notify"]
    assert sorted(result.services) == ["director", "notify"]


def test_a_failed_build_deploys_nothing_and_the_builds_queued_behind_it_never_start() -> None:
    # The fake bus runs one task at a time: director, ingest, enrich, notify.
    deployer = FakeDeployer(fail_build={"ingest": "no Dockerfile", "notify": "syntax error"})
    system = System(deployer)
    result = system.run(architecture())
    assert result.status is RunStatus.FAILED
    assert system.deployer.deploys == []
    assert [name for name, _ in deployer.built] == ["director"]
    errors = {(e.service, e.phase): e.error for e in result.errors}
    assert errors == {
        ("ingest", Phase.BUILD): "building ingest: no Dockerfile",
        ("enrich", Phase.BUILD): "not started: build of ingest failed",
        ("notify", Phase.BUILD): "not started: build of ingest failed",
    }
    # What did build is kept beside the errors.
    assert sorted(result.images) == ["director"]
    assert result.services["director"].status == "not deployed"


def test_deploy_failures_do_not_stop_other_deploys_and_are_all_reported() -> None:
    arch = architecture({"f": [service("a"), service("b"), service("c", "a")]}, director=False)
    system = System(FakeDeployer(fail_deploy={"a": "quota", "b": "denied"}))
    result = system.run(arch)
    assert result.status is RunStatus.FAILED
    assert {e.service for e in result.errors} == {"a", "b", "c"}
    assert next(e for e in result.errors if e.service == "c").error.startswith(
        "not deployed: dependency a"
    )
    assert result.services["c"].deploy_status is TaskStatus.SKIPPED
    assert sorted(result.images) == ["a", "b", "c"]


def test_a_failed_run_keeps_every_url_that_did_deploy() -> None:
    arch = architecture({"f": [service("a"), service("b")]}, director=False)
    result = System(FakeDeployer(fail_deploy={"b": "crashed"})).run(arch)
    assert result.status is RunStatus.FAILED
    assert result.urls == {"a": "https://a.fake.run"}


def test_duplicated_messages_build_and_deploy_each_service_once_and_finish_once() -> None:
    system = System()
    result = system.run(architecture(), duplicate=True)
    assert result.status is RunStatus.SUCCEEDED
    assert sorted(n for n, _ in system.deployer.built) == ["director", "enrich", "ingest", "notify"]
    assert sorted(system.deployer.deployed_names()) == ["director", "enrich", "ingest", "notify"]
    assert len(system.bus.topic(TOPIC_RESULTS)) == 1


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5], ids=lambda s: f"seed-{s}")
def test_reordered_and_duplicated_delivery_gives_the_same_result(seed: int) -> None:
    system = System()
    result = system.run(architecture(), duplicate=True, shuffle=random.Random(seed))
    assert result.status is RunStatus.SUCCEEDED
    assert len(system.deployer.deploys) == 4
    order = system.deployer.deployed_names()
    assert order.index("ingest") < order.index("enrich")


def test_a_redelivered_request_makes_no_second_run() -> None:
    system = System()
    request = DeployRequest(architecture=architecture().model_dump_json(), idempotency_key="k1")
    first = dispatch_request(request, system.rt)
    system.bus.deliver_all()
    second = dispatch_request(request, system.rt)
    system.bus.deliver_all()
    assert first.run_id == second.run_id == run_id_for("k1")
    assert len(system.store.runs) == 1
    assert len(system.deployer.built) == 4


def test_a_completion_seen_twice_changes_nothing_the_second_time() -> None:
    system = System()
    result = system.run(architecture())
    completions = [data for topic, data, _ in system.bus.published if topic == "completions"]
    before = system.store.tasks.copy()
    for data in completions:
        system.bus.queue.append(("completions", data, {}))
    system.bus.deliver_all()
    assert system.store.tasks == before
    assert system.store.get_result(result.run_id) == result
    finished = [RunFinished.model_validate_json(d) for d in system.bus.topic(TOPIC_RESULTS)]
    assert len(finished) == 1


def test_an_invalid_request_is_recorded_as_a_failed_run_naming_the_problem() -> None:
    system = System()
    run = dispatch_request(DeployRequest(architecture="project_id: [oops"), system.rt)
    assert run.status is RunStatus.FAILED
    assert run.error and "line" in run.error
    assert system.deployer.built == []


def test_an_architecture_with_nothing_to_build_finishes_at_once() -> None:
    arch = architecture({"f": [{"name": "x"}]}, director=False)
    result = System().run(arch)
    assert result.status is RunStatus.SUCCEEDED
    assert result.services == {}


def test_a_poison_task_message_is_acknowledged_and_starts_nothing() -> None:
    system = System()
    system.bus.queue.append(("tasks", b"{not json", {}))
    system.bus.queue.append(("completions", b'{"run_id": 1}', {}))
    assert system.bus.deliver_all() == 2
    assert system.deployer.built == []


def test_the_worker_says_it_waits_around_builds_and_deploys_and_only_there() -> None:
    # Given a runtime whose `waiting` notes when the worker is inside it
    inside: list[bool] = [False]
    seen: list[tuple[str, bool]] = []

    class Watching(FakeDeployer):
        def build(self, service_name: str, spec: object, **kw: object) -> str:
            seen.append(("build", inside[0]))
            return super().build(service_name, spec, **kw)  # type: ignore[arg-type]

        def deploy_service(self, name: str, account: str, spec: object, **kw: object) -> str:
            seen.append(("deploy", inside[0]))
            return super().deploy_service(name, account, spec, **kw)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def waiting() -> Iterator[None]:
        assert not inside[0], "waiting is not re-entered"
        inside[0] = True
        try:
            yield
        finally:
            inside[0] = False

    system = System(Watching())
    system.rt.waiting = waiting
    # When a run goes through
    result = system.run(architecture())
    # Then every build and deploy ran inside it, and nothing is left inside
    assert result.status is RunStatus.SUCCEEDED
    assert seen and all(flag for _, flag in seen)
    assert not inside[0]


def test_completions_say_their_worker_stored_them_and_the_aggregator_writes_each_once() -> None:
    # Given a store that counts the outcomes written to it
    class Counting(FakeRunStore):
        def __init__(self) -> None:
            super().__init__()
            self.completed: list[str] = []

        def complete_task(self, completion: TaskCompletion) -> TaskRecord | None:
            self.completed.append(completion.task_id)
            return super().complete_task(completion)

    system = System()
    store = Counting()
    system.store = store
    system.rt.store = store
    # When a run goes through, every message delivered twice
    result = system.run(architecture(), duplicate=True)
    # Then every completion on the wire says it was stored, and each outcome was written
    # by its worker alone (the duplicate deliveries of the tasks are refused at the claim)
    assert result.status is RunStatus.SUCCEEDED
    sent = [a for topic, _, a in system.bus.published if topic == TOPIC_COMPLETIONS]
    assert sent and all(a[STORED] == "1" for a in sent)
    assert sorted(store.completed) == sorted(a["task_id"] for a in sent)


def test_a_completion_not_marked_stored_is_applied_by_the_aggregator() -> None:
    # Given a running build whose outcome never reached the store
    system = System()
    run = dispatch_request(DeployRequest(architecture=architecture().model_dump_json()), system.rt)
    build = next(t for t in system.store.get_tasks(run.run_id) if t.phase is Phase.BUILD)
    claimed = system.store.claim_task(build.task_id, worker="w", lease_seconds=60, now=utcnow())
    assert claimed is not None
    done = TaskCompletion(
        run_id=run.run_id,
        task_id=build.task_id,
        phase=Phase.BUILD,
        service=build.service,
        attempt=claimed.attempt,
        status=TaskStatus.SUCCEEDED,
        image="img@sha256:1",
    )
    # When it arrives without the stored mark (a sender that did not write it first)
    on_completion(done.model_dump_json().encode(), attributes(done), system.rt)
    # Then the aggregator writes it
    stored = system.store.get_task(build.task_id)
    assert stored is not None and stored.status is TaskStatus.SUCCEEDED


class TaskReadsStore(FakeRunStore):
    """Notes which function read a run's tasks."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: list[str] = []

    def get_tasks(self, run_id: str, phase: Phase | None = None) -> list[TaskRecord]:
        self.readers.append(sys._getframe(1).f_code.co_name)
        return super().get_tasks(run_id, phase)


def test_a_new_run_is_dispatched_without_reading_its_tasks_back_and_a_redelivery_republishes() -> (
    None
):
    """A run this dispatch created has released nothing yet: reading every task back to
    republish the released ones found none (~30 ms at 1,000 services). A redelivered
    request (after a crash between creating the run and publishing) still does it."""
    store = TaskReadsStore()
    bus = FakeBus()
    rt = Runtime(store=store, bus=bus, deployer=FakeDeployer())
    request = DeployRequest(architecture=architecture().model_dump_json(), idempotency_key="k")

    run = dispatch_request(request, rt)

    assert "_resume" not in store.readers
    first = sorted(a["task_id"] for topic, _, a in bus.queue if topic == "tasks")
    assert len(first) == 4 and len(set(first)) == 4
    bus.queue.clear()  # the crash: those messages were never sent

    dispatch_request(request, rt)

    assert "_resume" in store.readers
    again = sorted(a["task_id"] for topic, _, a in bus.queue if topic == "tasks")
    assert again == first, "the released tasks are published again"
    assert run.run_id == run_id_for("k")
