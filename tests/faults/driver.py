"""Driving a run to its end: the scheduler's sweep loop on the fake clock, the work of a
slow task and of a worker outliving its lease, and one embedded run on the faulty bus.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from shared.core.control import sweep
from shared.core.dispatcher import dispatch_request
from shared.core.handlers import subscribe_all
from shared.core.runtime import Runtime
from tests.faults.faulty_adapters import FakeClock, FaultyBus, FaultyDeployer
from tests.faults.invariants import Observed, StoreProbe, observe
from tests.faults.scenarios import MAX_STEPS, SLOW_BY, STEP, Fault, Scenario


def sweep_until_finished(
    rt: Runtime, clock: FakeClock, run_ids: Sequence[str], settle: Callable[[], None]
) -> None:
    """What Cloud Scheduler does: sweep when the bus is quiet, at once (a lost completion
    needs no wait), then one step later (leases and `republish_after` have passed)."""

    def finished() -> bool:
        return all(rt.store.get_result(run_id) is not None for run_id in run_ids)

    for _ in range(MAX_STEPS):
        if finished():
            break
        sweep(rt)
        settle()
        if finished():
            break
        with clock.jump(STEP):
            sweep(rt)
        settle()
    sweep(rt)  # a sweep after the end changes nothing
    settle()


def slow_task(clock: FakeClock, rt: Runtime) -> Callable[[], None]:
    """A task that takes SLOW_BY seconds: the scheduler's sweep runs while it works, and
    times it out before any worker sees the new time."""

    def work() -> None:
        with clock.jump(SLOW_BY):
            sweep(rt)

    return work


def outlive_lease(clock: FakeClock, rt: Runtime, settle: Callable[[], None]) -> Callable[[], None]:
    """A worker stuck past its lease: the sweep re-sends its task, another worker does it."""

    def work() -> None:
        with clock.jump(STEP):
            sweep(rt)
        settle()

    return work


def run_embedded(scenario: Scenario, store: Any) -> Observed:
    """One scenario on the fault-injecting FakeBus: every delivery one at a time, in an
    order drawn from the seed, so the run replays exactly."""
    rng = random.Random(f"bus/{scenario.key}")
    clock, bus, deployer = FakeClock(), FaultyBus(scenario, rng), FaultyDeployer()
    probe = StoreProbe(store, clock, strict_halt=True, deploy_cap=scenario.deploy_concurrency)
    rt = scenario.runtime(probe.as_store(), bus, deployer, clock)
    deployer.register(scenario)
    deployer.store, deployer.on_slow = store, slow_task(clock, rt)
    deployer.on_stale = outlive_lease(clock, rt, bus.pump)
    subscribe_all(bus, rt)
    for topic, data, attributes in scenario.stray:
        scenario.record(Fault.POISON_STRAY)
        bus.inject(topic, data, attributes)
    dispatch_request(scenario.request(), rt)
    if scenario.repeat_request:
        bus.pump(limit=rng.randint(0, 12))
        scenario.record(Fault.REPEATED_REQUEST)
        dispatch_request(scenario.request(), rt)
    bus.pump()
    sweep_until_finished(rt, clock, [scenario.run_id], bus.pump)
    return observe(scenario, probe, bus.published, deployer, bus.errors)
