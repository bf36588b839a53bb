"""Two runs of one project at once under its build cap, on a faulty bus: seeded draws of
architectures, caps, lost, repeated and reordered messages, failing builds, and the
sweep after jumps in time. After every delivery a checker reads the store: the builds in
flight of both runs together never exceed the project's cap. At the end both runs have
finished and every slot is free again.

Replay a failure with `ARCHDEPLOY_FAULT_SEED=<seed in the message> pytest tests/faults`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.local.sqlite_store import SqliteRunStore
from shared.architecture.model import Architecture
from shared.core.control import sweep
from shared.core.dispatcher import dispatch_request
from shared.core.handlers import subscribe_all
from shared.core.runtime import RunPolicy, Runtime
from shared.messages import DeployRequest, Phase, TaskStatus
from tests.builders import architecture, service
from tests.fakes import FakeBus, FakeDeployer, FakeRunStore
from tests.faults.tally import Tally

PROJECT = "acme-dev"  # tests.builders' project: both runs share it
MAX_STEPS = 5_000
BUSY = (TaskStatus.PENDING, TaskStatus.RUNNING)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _draw_architecture(rng: random.Random, prefix: str) -> Architecture:
    names = [f"{prefix}-{i}" for i in range(rng.randint(2, 9))]
    services = [
        service(name, *([names[i - 1]] if i and rng.random() < 0.5 else []))
        for i, name in enumerate(names)
    ]
    return architecture({prefix: services}, director=rng.random() < 0.3)


def _in_flight_builds(store: Any, run_ids: list[str]) -> int:
    return sum(t.status in BUSY for r in run_ids for t in store.get_tasks(r, Phase.BUILD))


def _drive(
    rt: Runtime, bus: FakeBus, clock: Clock, rng: random.Random, check: Callable[[], None]
) -> None:
    """Deliver in a random order, losing or repeating some; when the bus is quiet, jump
    past `republish_after`, a lease or a deadline and sweep, as Cloud Scheduler would."""
    for _ in range(MAX_STEPS):
        if bus.queue:
            bus.queue.rotate(-rng.randrange(len(bus.queue)))
            topic, data, attributes = bus.queue.popleft()
            fate = rng.random()
            for _ in range(0 if fate < 0.05 else 2 if fate > 0.9 else 1):
                for subscriber in bus.subscribers.get(topic, []):
                    subscriber(data, attributes)
        else:
            clock.now += timedelta(seconds=rng.choice([130, 1000, 2000, 3700]))
            sweep(rt)
            if not bus.queue and not rt.store.list_active_runs():
                return
        check()
    raise AssertionError(f"runs did not finish in {MAX_STEPS} steps")


def _scenario(seed: int, store: Any) -> None:
    rng = random.Random(seed)
    cap = rng.randint(1, 4)
    failing = {f"a-{rng.randint(0, 8)}": "boom"} if rng.random() < 0.2 else {}
    clock, bus = Clock(), FakeBus()
    policy = RunPolicy(
        build_concurrency=rng.choice([None, 2, 5]),
        deploy_concurrency=rng.choice([None, 1, 3]),
        project_build_cap=cap,
    )
    rt = Runtime(
        store=store, bus=bus, deployer=FakeDeployer(fail_build=failing), policy=policy, clock=clock
    )
    subscribe_all(bus, rt)
    run_ids = [
        dispatch_request(
            DeployRequest(
                architecture=_draw_architecture(rng, prefix).model_dump_json(),
                idempotency_key=f"{seed}-{prefix}",
            ),
            rt,
        ).run_id
        for prefix in ("a", "b")
    ]
    worst = 0

    def check() -> None:
        nonlocal worst
        in_flight = _in_flight_builds(store, run_ids)
        worst = max(worst, in_flight)
        assert in_flight <= cap, f"seed {seed}: {in_flight} builds in flight, project cap {cap}"

    check()
    _drive(rt, bus, clock, rng, check)
    for run_id in run_ids:
        assert store.get_result(run_id) is not None, f"seed {seed}: run {run_id} never finished"
    assert worst >= 1, f"seed {seed}: no build ever ran"
    # Every slot was given back: the whole cap is free for the next run.
    free, _ = store.build_slots(
        PROJECT,
        release=[],
        want=[f"probe-{i}" for i in range(cap)],
        cap=cap,
        lease_seconds=60,
        now=clock.now,
    )
    assert len(free) == cap, f"seed {seed}: slots still held after both runs finished"


@pytest.mark.parametrize("setup", ["fake", "sqlite"], ids=["fake", "sqlite"])
def test_two_concurrent_runs_never_exceed_the_project_build_cap_together(
    setup: str, tally: Tally, tmp_path: Path
) -> None:
    for i in range(40 if setup == "fake" else 12):
        seed = tally.seed * 1000 + i
        store = FakeRunStore() if setup == "fake" else SqliteRunStore(tmp_path / f"{i}.db")
        try:
            _scenario(seed, store)
        finally:
            if isinstance(store, SqliteRunStore):
                store.close()


def test_the_checker_sees_a_second_run_ignoring_the_project_cap(tally: Tally) -> None:
    """Without the project cap each run keeps only its own: together they exceed it."""
    store, bus, clock = FakeRunStore(), FakeBus(), Clock()
    rt = Runtime(
        store=store,
        bus=bus,
        deployer=FakeDeployer(),
        policy=RunPolicy(build_concurrency=2),
        clock=clock,
    )
    subscribe_all(bus, rt)
    run_ids = [
        dispatch_request(
            DeployRequest(
                architecture=_draw_architecture(random.Random(i), p).model_dump_json(),
                idempotency_key=f"{tally.seed}-{p}",
            ),
            rt,
        ).run_id
        for i, p in enumerate(("a", "b"))
    ]
    assert _in_flight_builds(store, run_ids) == 4  # per-run caps only: 2 + 2 > 2
