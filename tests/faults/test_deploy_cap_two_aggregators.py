"""Two aggregators (two function instances, as Pub/Sub push may pick) step one run at once
under its deploy cap, on one store. The interleaving the README used to admit as a limit
is driven by events, not by timing: instance 2 counts the room while one deploy still
runs, instance 1 counts it after that deploy ended, and each then reads the ready deploys
after the other counted. Without the run's deploy slots in the store, instance 2 releases
one deploy and instance 1 two more: 3 in flight under a cap of 2.

A checker counts the run's deploys in flight after every release and keeps the worst:
on the fake store, SQLite and the Firestore emulator. Afterwards the run is driven to its
end (with a redelivered completion on the other instance, and a deploy that ends without
its completion reaching an aggregator): every slot is free again.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.gcp.firestore_store import FirestoreRunStore
from shared.adapters.local.sqlite_store import SqliteRunStore
from shared.core.aggregator import record_completion
from shared.core.deploy_slots import settle_deploy_slots, slot_key, take_deploy_slots
from shared.core.dispatcher import dispatch_request
from shared.core.handlers import subscribe_all
from shared.core.publishing import release
from shared.core.runtime import RunPolicy, Runtime
from shared.messages import (
    TOPIC_TASKS,
    DeployRequest,
    Phase,
    TaskCompletion,
    TaskRecord,
    TaskStatus,
)
from tests.builders import architecture, service
from tests.fakes import FakeBus, FakeDeployer, FakeRunStore

CAP = 2
BUSY = (TaskStatus.PENDING, TaskStatus.RUNNING)
NOW = datetime(2026, 1, 1, tzinfo=UTC)
WAIT = 30  # seconds: only a guard against a hang, never what orders the steps


class GatedStore:
    """The store, with a gate before a named thread's first read of the waiting deploys,
    and a checker after every release."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.gates: dict[str, tuple[threading.Event, threading.Event]] = {}
        self.worst = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def waiting_tasks(self, run_id: str, phase: Phase, limit: int) -> list[TaskRecord]:
        gate = self.gates.pop(threading.current_thread().name, None)
        if gate is not None and phase is Phase.DEPLOY:
            arrived, go = gate
            arrived.set()
            assert go.wait(WAIT), "the gate was never opened"
        tasks: list[TaskRecord] = self._inner.waiting_tasks(run_id, phase, limit)
        return tasks

    def release_tasks(self, releases: Sequence[tuple[str, Any]], *, now: datetime) -> Any:
        released = self._inner.release_tasks(releases, now=now)
        for run_id in {t.run_id for t in released}:
            deploys = self._inner.get_tasks(run_id, Phase.DEPLOY)
            self.worst = max(self.worst, sum(t.status in BUSY for t in deploys))
        return released


def _runtimes(store: Any) -> tuple[Runtime, Runtime, FakeBus]:
    bus = FakeBus()
    policy = RunPolicy(deploy_concurrency=CAP)
    rts = [
        Runtime(store=store, bus=bus, deployer=FakeDeployer(), policy=policy, clock=lambda: NOW)
        for _ in range(2)
    ]
    subscribe_all(bus, rts[0])  # builds and the phase's opening: instance 1
    return rts[0], rts[1], bus


def _deliver_all_but_deploys(bus: FakeBus) -> None:
    """Run the builds; hold the deploy tasks, whose ends the test plays itself."""
    held = []
    while bus.queue:
        topic, data, attributes = bus.queue.popleft()
        if topic == TOPIC_TASKS and attributes.get("phase") == Phase.DEPLOY.value:
            held.append((topic, data, attributes))
            continue
        for subscriber in bus.subscribers.get(topic, []):
            subscriber(data, attributes)
    bus.queue.extend(held)


def _end(store: Any, run_id: str, name: str, status: TaskStatus) -> TaskCompletion:
    """A worker ran the deploy of `name` and stored its outcome (it does, then publishes)."""
    task_id = next(t.task_id for t in store.get_tasks(run_id, Phase.DEPLOY) if t.service == name)
    claimed = store.claim_task(task_id, worker="w", lease_seconds=600, now=NOW)
    assert claimed is not None, f"{name} was not released"
    completion = TaskCompletion(
        run_id=run_id,
        task_id=task_id,
        phase=Phase.DEPLOY,
        service=name,
        attempt=claimed.attempt,
        status=status,
        url=f"https://{name}.example",
        finished_at=NOW,
    )
    assert store.complete_task(completion) is not None
    return completion


def _in_thread(name: str, rt: Runtime, completion: TaskCompletion) -> threading.Thread:
    thread = threading.Thread(
        target=record_completion, args=(completion, rt), kwargs={"stored": True}, name=name
    )
    thread.start()
    return thread


def _gate(store: GatedStore, thread: str) -> tuple[threading.Event, threading.Event]:
    gate = (threading.Event(), threading.Event())
    store.gates[thread] = gate
    return gate


def _scenario(inner: Any) -> GatedStore:
    store = GatedStore(inner)
    rt1, rt2, bus = _runtimes(store)
    # p and q deploy first (the cap's two slots); s waits on q, r1 and r2 on p.
    arch = architecture(
        {
            "app": [
                service("p"),
                service("q"),
                service("s", "q"),
                *[service(r, "p") for r in ("r1", "r2")],
            ]
        },
        director=False,
    )
    request = DeployRequest(architecture=arch.model_dump_json(), idempotency_key="two-aggregators")
    run_id = dispatch_request(request, rt1).run_id
    _deliver_all_but_deploys(bus)
    assert {t.service for t in inner.get_tasks(run_id, Phase.DEPLOY) if t.status in BUSY} == {
        "p",
        "q",
    }
    # Instance 2 steps on q's end: p still runs, so it counts room for one, then waits.
    arrived2, go2 = _gate(store, "instance-2")
    second = _in_thread("instance-2", rt2, _end(inner, run_id, "q", TaskStatus.SUCCEEDED))
    assert arrived2.wait(WAIT)
    # p ends; instance 1 steps on it: nothing in flight, it counts room for two, waits.
    arrived1, go1 = _gate(store, "instance-1")
    p_done = _end(inner, run_id, "p", TaskStatus.SUCCEEDED)
    first = _in_thread("instance-1", rt1, p_done)
    assert arrived1.wait(WAIT)
    # Instance 2 reads the ready deploys and releases one; then instance 1 reads its own.
    go2.set()
    second.join(WAIT)
    go1.set()
    first.join(WAIT)
    assert not first.is_alive() and not second.is_alive()
    record_completion(p_done, rt2, stored=True)  # redelivered, to the other instance
    _finish(inner, run_id, (rt1, rt2))
    return store


def _finish(inner: Any, run_id: str, rts: tuple[Runtime, Runtime]) -> None:
    """End the deploys in flight until the run ends: one fails without its completion
    reaching an aggregator (lost), the others alternate between the instances."""
    lost = True
    for turn in range(20):
        busy = [t for t in inner.get_tasks(run_id, Phase.DEPLOY) if t.status in BUSY]
        if not busy:
            break
        for task in busy:
            if lost:
                _end(inner, run_id, task.service, TaskStatus.FAILED)
                lost = False
                continue
            completion = _end(inner, run_id, task.service, TaskStatus.SUCCEEDED)
            record_completion(completion, rts[turn % 2], stored=True)
    assert inner.get_result(run_id) is not None, "the run never finished"
    # Every slot is free again: the whole cap can be taken.
    free, _ = inner.build_slots(
        slot_key(run_id), release=[], want=["x", "y"], cap=CAP, lease_seconds=60, now=NOW
    )
    assert len(free) == CAP, "deploy slots still held after the run finished"


def _store(setup: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    if setup == "fake":
        return FakeRunStore()
    if setup == "sqlite":
        return SqliteRunStore(tmp_path / "runs.db")
    client = request.getfixturevalue("firestore_client")
    collection = f"deploycap-{uuid.uuid4().hex[:12]}"
    return FirestoreRunStore(project_id=client.project, collection=collection, client=client)


@pytest.mark.parametrize("setup", ["fake", "sqlite", "firestore"])
def test_two_aggregators_stepping_one_run_never_exceed_its_deploy_cap(
    setup: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    inner = _store(setup, tmp_path, request)
    try:
        store = _scenario(inner)
    finally:
        if isinstance(inner, SqliteRunStore):
            inner.close()
    assert store.worst == CAP, f"{store.worst} deploys in flight at once, deploy cap {CAP}"


def _opened(store: Any) -> tuple[Runtime, Runtime, str]:
    """A run whose deploys p and q hold the cap's two slots (released, not yet claimed)."""
    rt1, rt2, bus = _runtimes(store)
    arch = architecture({"app": [service("p"), service("q"), service("s", "q")]}, director=False)
    request = DeployRequest(architecture=arch.model_dump_json(), idempotency_key="opened")
    run_id = dispatch_request(request, rt1).run_id
    _deliver_all_but_deploys(bus)
    return rt1, rt2, run_id


def _probe(store: Any, run_id: str) -> int:
    """How many of the run's deploy slots are free (taking them, then freeing them)."""
    want = [f"probe-{k}" for k in range(CAP)]
    key = slot_key(run_id)
    free, _ = store.build_slots(key, release=[], want=want, cap=CAP, lease_seconds=60, now=NOW)
    store.build_slots(key, release=free, want=[], cap=CAP, lease_seconds=0, now=NOW)
    return len(free)


def test_a_late_completion_of_an_earlier_attempt_keeps_the_slot_of_the_attempt_running() -> None:
    store = FakeRunStore()
    _, rt2, run_id = _opened(store)
    (p,) = [t for t in store.get_tasks(run_id, Phase.DEPLOY) if t.service == "p"]
    assert store.claim_task(p.task_id, worker="w1", lease_seconds=60, now=NOW)
    later = NOW + timedelta(seconds=61)  # the first attempt's lease lapsed: claimed again
    assert store.claim_task(p.task_id, worker="w2", lease_seconds=60, now=later)
    late = TaskCompletion(
        run_id=run_id,
        task_id=p.task_id,
        phase=Phase.DEPLOY,
        service="p",
        attempt=1,
        status=TaskStatus.FAILED,
        error="the first attempt, late",
        finished_at=later,
    )
    record_completion(late, rt2)
    assert _probe(store, run_id) == 0, "the running attempt's slot was freed"


def test_a_slot_granted_for_a_deploy_released_elsewhere_is_freed_once_it_has_ended() -> None:
    store = FakeRunStore()
    _, rt2, run_id = _opened(store)
    run = store.get_run(run_id)
    assert run is not None
    deploys = {t.service: t for t in store.get_tasks(run_id, Phase.DEPLOY)}
    _end(store, run_id, "p", TaskStatus.SUCCEEDED)  # its completion not applied yet
    # Another instance read p and q waiting, before the first released them.
    granted = take_deploy_slots(run, [deploys["p"], deploys["q"]], rt2)
    assert release(run, granted, rt2) == []
    settle_deploy_slots(run, granted, [], rt2)
    assert _probe(store, run_id) == 1, "p ended: its slot is free; q runs: its slot is kept"
