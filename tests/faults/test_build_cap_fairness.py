"""Fairness between two runs of one project under its build cap: a run must not starve
behind another that keeps taking the slots its own builds free.

Run A starts first and takes every slot; run B arrives while all of A's other builds
still wait. A checker after every delivery records which run each build that starts
belongs to. While both runs have builds waiting, neither may start more than `cap`
builds in a row: the slots are shared in turns, not kept by whoever holds them.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.adapters.local.sqlite_store import SqliteRunStore
from shared.core.dispatcher import dispatch_request
from shared.core.handlers import subscribe_all
from shared.core.runtime import RunPolicy, Runtime
from shared.messages import DeployRequest, Phase, TaskStatus
from shared.ports import RunStore
from tests.builders import architecture, service
from tests.fakes import FakeBus, FakeDeployer, FakeRunStore

BUILDS = 8
STARTED = (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUCCEEDED)


def _starts(store: RunStore, run_ids: list[str], seen: set[str], order: list[str]) -> None:
    """Append to `order` the run of each build that has started since the last look."""
    for run_id in run_ids:
        for task in store.get_tasks(run_id, Phase.BUILD):
            if task.status in STARTED and task.task_id not in seen:
                seen.add(task.task_id)
                order.append(run_id)


def _longest_streak_while_both_wait(order: list[str], run_ids: list[str]) -> int:
    """The most builds one run started in a row while the other still had builds waiting
    (each run has BUILDS builds)."""
    started = dict.fromkeys(run_ids, 0)
    worst = streak = 0
    last = None
    for run_id in order:
        both_wait = all(n < BUILDS for n in started.values())
        started[run_id] += 1
        if not both_wait:
            break
        streak = streak + 1 if run_id == last else 1
        last = run_id
        worst = max(worst, streak)
    return worst


@pytest.mark.parametrize("cap", [1, 2, 3])
@pytest.mark.parametrize("setup", ["fake", "sqlite"])
def test_a_run_does_not_starve_behind_another_that_keeps_freeing_slots(
    cap: int, setup: str, tmp_path: Path
) -> None:
    store: RunStore = FakeRunStore() if setup == "fake" else SqliteRunStore(tmp_path / "runs.db")
    bus = FakeBus()
    rt = Runtime(
        store=store,
        bus=bus,
        deployer=FakeDeployer(),
        policy=RunPolicy(project_build_cap=cap),
        clock=lambda: datetime(2026, 1, 1, tzinfo=UTC),
    )
    subscribe_all(bus, rt)
    run_ids: list[str] = []
    seen: set[str] = set()
    order: list[str] = []
    for prefix in ("a", "b"):
        services = [service(f"{prefix}-{i}") for i in range(BUILDS)]
        arch = architecture({prefix: services}, director=False)
        request = DeployRequest(architecture=arch.model_dump_json(), idempotency_key=prefix)
        run_ids.append(dispatch_request(request, rt).run_id)
        _starts(store, run_ids, seen, order)
    rng = random.Random(cap)
    for _ in range(10_000):
        if not bus.queue:
            break
        bus.queue.rotate(-rng.randrange(len(bus.queue)))  # any delivery order
        topic, data, attributes = bus.queue.popleft()
        for subscriber in bus.subscribers.get(topic, []):
            subscriber(data, attributes)
        _starts(store, run_ids, seen, order)
    finished = [store.get_result(r) is not None for r in run_ids]
    if isinstance(store, SqliteRunStore):
        store.close()
    assert all(finished), "a run never finished"
    assert len(order) == 2 * BUILDS
    streak = _longest_streak_while_both_wait(order, run_ids)
    assert streak <= cap, f"cap {cap}: one run started {streak} builds in a row: {order}"
