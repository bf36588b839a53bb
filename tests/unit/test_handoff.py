"""A freed slot handed over by the worker whose task ended (`shared.core.handoff`), and
the cap holding when that worker and the aggregator admit at once.

Driven through fakes, one delivery at a time: a worker's task message is delivered and
its completion is left queued, so whatever was released meanwhile was released by the
worker, not by the aggregator."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.adapters.local.inprocess_bus import InProcessBus
from shared.architecture.model import Architecture
from shared.bootstrap import embedded, wire
from shared.core.admission import ready_deploys
from shared.core.dispatcher import dispatch_request
from shared.core.handlers import on_task, subscribe_all
from shared.core.run_engine import advance_run
from shared.core.runtime import RunLocks, RunPolicy, Runtime
from shared.messages import (
    TOPIC_COMPLETIONS,
    TOPIC_TASKS,
    DeployRequest,
    Phase,
    RunStatus,
    TaskCompletion,
    TaskRecord,
    TaskStatus,
)
from shared.settings import Settings
from tests.builders import architecture, service, wide
from tests.fakes import FakeBus, FakeDeployer, FakeRunStore

IN_FLIGHT = (TaskStatus.PENDING, TaskStatus.RUNNING)


class System:
    def __init__(self, store: FakeRunStore | None = None, *, in_process: bool, **policy: Any):
        self.store = store or FakeRunStore()
        self.bus = FakeBus()
        self.rt = Runtime(
            store=self.store,
            bus=self.bus,
            deployer=FakeDeployer(),
            policy=RunPolicy(**policy),
            in_process=in_process,
        )
        subscribe_all(self.bus, self.rt)

    def dispatch(self, arch: Architecture) -> str:
        request = DeployRequest(architecture=arch.model_dump_json())
        return dispatch_request(request, self.rt).run_id

    def deliver_until(self, done: Callable[[], bool]) -> None:
        while not done():
            topic, data, attributes = self.bus.queue.popleft()
            for subscriber in self.bus.subscribers.get(topic, []):
                subscriber(data, attributes)

    def work(self, service_name: str, rt: Runtime | None = None) -> None:
        """One worker does the queued task of `service_name`; nothing else is delivered."""
        (item,) = [
            m for m in self.bus.queue if m[0] == TOPIC_TASKS and m[2]["service"] == service_name
        ]
        self.bus.queue.remove(item)
        on_task(item[1], item[2], rt or self.rt)

    def hear_completions(self) -> None:
        """The aggregator hears the queued completions; nothing else is delivered."""
        for item in [m for m in self.bus.queue if m[0] == TOPIC_COMPLETIONS]:
            self.bus.queue.remove(item)
            for subscriber in self.bus.subscribers[TOPIC_COMPLETIONS]:
                subscriber(item[1], item[2])

    def in_flight(self, run_id: str, phase: Phase) -> list[str]:
        return sorted(
            t.service for t in self.store.get_tasks(run_id, phase) if t.status in IN_FLIGHT
        )

    def completions_queued(self) -> int:
        return sum(topic == TOPIC_COMPLETIONS for topic, _, _ in self.bus.queue)


def _in_deploys(system: System, run_id: str) -> bool:
    run = system.store.get_run(run_id)
    return run is not None and run.phase is Phase.DEPLOY


def test_a_builds_slot_is_left_to_the_aggregator() -> None:
    system = System(in_process=True, build_concurrency=2)
    run_id = system.dispatch(wide(4))

    system.work("svc-0000")
    assert system.in_flight(run_id, Phase.BUILD) == ["svc-0001"]

    system.hear_completions()
    assert system.in_flight(run_id, Phase.BUILD) == ["svc-0001", "svc-0002"]


def test_a_worker_whose_deploy_ends_releases_the_next_ready_deploy_in_process() -> None:
    # b waits on a: when a's deploy ends, its worker releases b (ready now) at once.
    arch = architecture({"flow": [service("a"), service("b", "a"), service("c"), service("d")]})
    system = System(in_process=True, deploy_concurrency=2)
    run_id = system.dispatch(arch)
    system.deliver_until(lambda: _in_deploys(system, run_id))
    assert system.in_flight(run_id, Phase.DEPLOY) == ["a", "c"]

    system.work("a")

    assert system.in_flight(run_id, Phase.DEPLOY) == ["b", "c"]
    assert system.completions_queued() == 1


def test_across_processes_a_deploy_slot_is_left_to_the_aggregator() -> None:
    """Deploys become ready as others end: two processes admitting at once could fill
    the same room twice, so only an aggregator hands their slots over on Google Cloud."""
    system = System(in_process=False, deploy_concurrency=2)
    run_id = system.dispatch(wide(4))
    system.deliver_until(lambda: _in_deploys(system, run_id))
    first = system.in_flight(run_id, Phase.DEPLOY)

    system.work(first[0])
    assert system.in_flight(run_id, Phase.DEPLOY) == first[1:]

    system.hear_completions()
    assert len(system.in_flight(run_id, Phase.DEPLOY)) == 2


def test_a_failed_deploy_hands_nothing_over_its_dependants_are_skipped_by_the_aggregator() -> None:
    arch = architecture({"flow": [service("a"), service("b", "a"), service("c"), service("d")]})
    system = System(in_process=True, deploy_concurrency=2)
    system.rt.deployer = FakeDeployer(fail_deploy={"a": "no quota"})
    run_id = system.dispatch(arch)
    system.deliver_until(lambda: _in_deploys(system, run_id))

    system.work("a")
    assert system.in_flight(run_id, Phase.DEPLOY) == ["c"]

    system.deliver_until(lambda: not system.bus.queue)
    statuses = {t.service: t.status for t in system.store.get_tasks(run_id, Phase.DEPLOY)}
    assert statuses == {
        "a": TaskStatus.FAILED,
        "b": TaskStatus.SKIPPED,
        "c": TaskStatus.SUCCEEDED,
        "d": TaskStatus.SUCCEEDED,
    }


# --- a worker and the aggregator admitting at once ------------------------------------------


class RacingStore(FakeRunStore):
    """Runs `race` once: right after the next read of waiting tasks (`at="read"`: the
    reader has not counted the room again yet), or just before the next release
    (`at="release"`: the reader has chosen what to release). Keeps the most tasks of
    each phase seen in flight after a release."""

    race: Callable[[], None] | None = None
    at = "read"

    def __init__(self) -> None:
        super().__init__()
        self.most: dict[Phase, int] = {}

    def _race(self, at: str) -> None:
        if self.race is not None and self.at == at:
            race, self.race = self.race, None
            race()

    def waiting_tasks(self, run_id: str, phase: Phase, limit: int) -> list[TaskRecord]:
        waiting = super().waiting_tasks(run_id, phase, limit)
        self._race("read")
        return waiting

    def release_tasks(
        self, releases: Sequence[tuple[str, Mapping[str, Any]]], *, now: datetime
    ) -> list[TaskRecord]:
        self._race("release")
        released = super().release_tasks(releases, now=now)
        for task in released:
            busy = sum(t.status in IN_FLIGHT for t in self.get_tasks(task.run_id, task.phase))
            self.most[task.phase] = max(self.most.get(task.phase, 0), busy)
        return released


def _end(store: FakeRunStore, task: TaskRecord, **outputs: Any) -> None:
    """The task ends; its completion is not heard yet."""
    store.complete_task(
        TaskCompletion(
            run_id=task.run_id,
            task_id=task.task_id,
            phase=task.phase,
            service=task.service,
            status=TaskStatus.SUCCEEDED,
            attempt=task.attempt,
            **outputs,
        )
    )


class SignallingLocks(RunLocks):
    """`RunLocks` that say when a thread is about to take a run's lock."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = threading.Event()

    @contextmanager
    def hold(self, run_id: str) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            self.asked.set()
        with super().hold(run_id):
            yield


def test_the_deploy_cap_holds_when_a_worker_and_the_aggregator_admit_at_once() -> None:
    """x's worker reads the room (1: a is in flight) and the ready deploys ([p]: b and c
    wait on a). Before it releases p, a ends and the aggregator admits on another thread:
    counting 0 in flight and b, c, p ready, alone it would release two more, three in all.
    It waits for the worker's release instead, then counts p and releases one."""
    arch = architecture(
        {"flow": [service("a"), service("b", "a"), service("c", "a"), service("x"), service("p")]}
    )
    store = RacingStore()
    store.at = "release"
    system = System(store, in_process=True, deploy_concurrency=2)
    system.rt.admission = locks = SignallingLocks()
    run_id = system.dispatch(arch)
    system.deliver_until(lambda: _in_deploys(system, run_id))
    assert system.in_flight(run_id, Phase.DEPLOY) == ["a", "x"]
    a = next(t for t in store.get_tasks(run_id, Phase.DEPLOY) if t.service == "a")
    aggregator = threading.Thread(target=advance_run, args=(run_id, system.rt))

    def race() -> None:
        _end(store, a, url="https://a")
        aggregator.start()
        assert locks.asked.wait(10)

    store.race = race
    system.work("x")
    aggregator.join(10)

    assert not aggregator.is_alive()
    assert store.most[Phase.DEPLOY] == 2
    assert system.in_flight(run_id, Phase.DEPLOY) == ["b", "p"]
    system.deliver_until(lambda: not system.bus.queue)
    result = store.get_result(run_id)
    assert result is not None and result.status is RunStatus.SUCCEEDED


def test_ready_deploys_reads_past_the_first_waiting_ones_when_those_wait_on_others() -> None:
    """Twenty deploys wait on `root`, ranked before `free`, which waits on nothing: the
    first read (16) finds none ready, the wider one finds `free`."""
    dependants = [service(f"d{i:02d}", "root") for i in range(20)]
    arch = architecture({"flow": [service("root"), *dependants, service("free")]})
    system = System(in_process=False, deploy_concurrency=1)
    run_id = system.dispatch(arch)
    system.deliver_until(lambda: _in_deploys(system, run_id))
    assert system.in_flight(run_id, Phase.DEPLOY) == ["root"]

    assert [t.service for t in ready_deploys(run_id, 1, system.rt)] == ["free"]
    assert [t.service for t in ready_deploys(run_id, 5, system.rt)] == ["free"]

    root = next(t for t in system.store.get_tasks(run_id, Phase.DEPLOY) if t.service == "root")
    _end(system.store, root, url="https://root")
    ready = [t.service for t in ready_deploys(run_id, 3, system.rt)]
    assert ready == ["d00", "d01", "d02"]


def test_only_an_embedded_runtime_hands_deploy_slots_over(tmp_path: Path) -> None:
    """`embedded` wires every handler to one runtime; `wire` (a function, even on an
    in-process bus) wires one role's, whose aggregator runs elsewhere."""
    system = embedded(Settings(state_dir=tmp_path / "a"), deployer=FakeDeployer())
    try:
        assert system.rt.in_process
    finally:
        system.close()
    function = wire(Settings(state_dir=tmp_path / "b", bus_kind="inprocess"))
    assert isinstance(function.bus, InProcessBus) and not function.in_process
    function.bus.close()
    function.store.close()


class CountingStore(FakeRunStore):
    """Counts the reads admission makes."""

    def __init__(self) -> None:
        super().__init__()
        self.admission_reads = 0

    def count_tasks(self, run_id: str, phase: Phase) -> dict[TaskStatus, int]:
        self.admission_reads += 1
        return super().count_tasks(run_id, phase)

    def waiting_tasks(self, run_id: str, phase: Phase, limit: int) -> list[TaskRecord]:
        self.admission_reads += 1
        return super().waiting_tasks(run_id, phase, limit)


def test_once_no_deploy_waits_a_worker_whose_deploy_ends_reads_nothing_to_hand_over() -> None:
    """A deploy never waits again once released: with every deploy released (here the cap
    held none back), a hand-off has nothing to give, so it costs no store read (at 1,000
    services uncapped it had cost three per deploy, ~0.3 s of the run)."""
    store = CountingStore()
    system = System(store, in_process=True, deploy_concurrency=4)
    run_id = system.dispatch(wide(3))
    system.deliver_until(lambda: _in_deploys(system, run_id))
    assert len(system.in_flight(run_id, Phase.DEPLOY)) == 3
    store.admission_reads = 0
    queued = system.completions_queued()

    system.work("svc-0000")

    assert store.admission_reads == 0
    assert system.completions_queued() == queued + 1, "the deploy itself was done"


def test_the_hand_off_that_releases_the_last_waiting_deploy_ends_the_reads() -> None:
    store = CountingStore()
    system = System(store, in_process=True, deploy_concurrency=2)
    run_id = system.dispatch(wide(3))
    system.deliver_until(lambda: _in_deploys(system, run_id))
    first = system.in_flight(run_id, Phase.DEPLOY)

    system.work(first[0])  # hands its slot to the last waiting deploy
    assert len(system.in_flight(run_id, Phase.DEPLOY)) == 2
    store.admission_reads = 0
    system.work(first[1])

    assert store.admission_reads == 0


class FailingReadStore(FakeRunStore):
    """The admission read fails once, with an error that is not ours (a driver's)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    def waiting_tasks(self, run_id: str, phase: Phase, limit: int) -> list[TaskRecord]:
        if self.fail:
            self.fail = False
            raise OSError("disk I/O error")
        return super().waiting_tasks(run_id, phase, limit)


def test_a_hand_off_that_fails_in_any_way_still_lets_the_completion_go_out() -> None:
    """The hand-off is an optimisation between storing a deploy's outcome and announcing
    it: should it fail, the completion must still be published (the aggregator then
    admits), else the run would wait for it forever."""
    store = FailingReadStore()
    system = System(store, in_process=True, deploy_concurrency=2)
    run_id = system.dispatch(wide(3))
    system.deliver_until(lambda: _in_deploys(system, run_id))
    first = system.in_flight(run_id, Phase.DEPLOY)
    queued = system.completions_queued()
    store.fail = True

    system.work(first[0])

    assert system.completions_queued() == queued + 1
    system.deliver_until(lambda: not system.bus.queue)
    run = store.get_run(run_id)
    assert run is not None and run.status is RunStatus.SUCCEEDED


def test_a_finished_run_is_forgotten_by_admission() -> None:
    """A long-lived aggregator (a function instance) keeps no mark per run it ever saw."""
    system = System(in_process=True, deploy_concurrency=4)
    run_id = system.dispatch(wide(3))
    system.deliver_until(lambda: _in_deploys(system, run_id))
    assert run_id in system.rt.admission.deploys_released

    system.deliver_until(lambda: not system.bus.queue)

    run = system.store.get_run(run_id)
    assert run is not None and run.status is RunStatus.SUCCEEDED
    assert run_id not in system.rt.admission.deploys_released
