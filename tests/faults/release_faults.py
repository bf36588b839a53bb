"""Releases under injected faults: a deployer that crashes mid-stage or mid-promote, checks
that fail or run past their deadline, on the fault-injecting bus and the fake clock; and
the release invariant, "every service ends on a verified revision or the one before".
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from shared.architecture.model import Architecture, VerifyCheck
from shared.core.control import sweep
from shared.core.dispatcher import dispatch_request, run_id_for
from shared.core.handlers import subscribe_all
from shared.core.runtime import Runtime
from shared.deployer import Staged, Target, Traffic
from shared.messages import (
    TOPIC_RESULTS,
    CheckOutcome,
    DeployRequest,
    Phase,
    RunResult,
    RunStatus,
    TaskRecord,
    TaskStatus,
)
from tests.builders import architecture, service
from tests.fakes import FakeDeployer, FakeRunStore
from tests.faults.driver import sweep_until_finished
from tests.faults.faulty_adapters import FakeClock, FaultyBus, WorkerCrash
from tests.faults.scenarios import SLOW_BY, Scenario


@dataclass
class ReleaseFaults:
    """What goes wrong in one release run (task ids are the release run's)."""

    crash_stage: set[str] = field(default_factory=set)  # services: crash after staging
    crash_promote: set[str] = field(default_factory=set)  # crash after the first traffic move
    fail_check: dict[str, int] = field(default_factory=dict)  # service -> failing check call
    slow_check: set[str] = field(default_factory=set)  # its first check outlives the deadline
    steps: list[int] = field(default_factory=lambda: [100])


class CrashingDeployer(FakeDeployer):
    """FakeDeployer whose worker dies right after a traffic call's effect, once each."""

    def __init__(self, faults: ReleaseFaults) -> None:
        super().__init__()
        self.faults = faults

    def stage(
        self,
        service_name: str,
        service_account_email: str,
        spec: Any,
        *,
        tag: str,
        target: Target | None = None,
    ) -> Staged:
        staged = super().stage(service_name, service_account_email, spec, tag=tag, target=target)
        if service_name in self.faults.crash_stage:
            self.faults.crash_stage.discard(service_name)
            raise WorkerCrash(f"worker died after staging {service_name}")
        return staged

    def set_traffic(
        self, service_name: str, percents: dict[str, int], *, target: Target | None = None
    ) -> Traffic:
        traffic = super().set_traffic(service_name, percents, target=target)
        if service_name in self.faults.crash_promote:
            self.faults.crash_promote.discard(service_name)
            raise WorkerCrash(f"worker died promoting {service_name}")
        return traffic


class ScriptedChecks:
    """`CheckRunner` whose answers are scripted per service (read from the tag URL)."""

    def __init__(self, faults: ReleaseFaults, on_slow: Any) -> None:
        self.faults = faults
        self.on_slow = on_slow
        self.calls: dict[str, int] = {}

    def run(self, check: VerifyCheck, target_url: str) -> CheckOutcome:
        name = target_url.split("---", 1)[1].split(".", 1)[0]
        self.calls[name] = self.calls.get(name, 0) + 1
        if name in self.faults.slow_check:
            self.faults.slow_check.discard(name)
            self.on_slow()  # the sweep times the task out while the check runs
        passed = self.faults.fail_check.get(name) != self.calls[name]
        return CheckOutcome(name=check.name, passed=passed, detail=f"call {self.calls[name]}")


def release_arch(shape: list[dict[str, Any]], version: str, steps: list[int]) -> Architecture:
    release = {"strategy": "steps", "steps": steps} if steps != [100] else {}
    with_env = [
        {**s, "deployment": {**s["deployment"], "environment_vars": {"V": version}}} for s in shape
    ]
    return architecture({"flow": with_env}, director=False, release=release or None)


SHAPES = {
    "chain": [service("a"), service("b", "a"), service("c", "b")],
    "diamond": [service("t"), service("l", "t"), service("r", "t"), service("m", "l", "r")],
    "pair": [service("x"), service("y")],
}
CHECK = [{"command": ["smoke"]}]


@dataclass
class ReleaseSeen:
    result: RunResult | None
    tasks: list[TaskRecord]
    before: dict[str, dict[str, int]]
    after: dict[str, dict[str, int]]
    finished: int


def run_release(
    key: str, shape: str, faults: ReleaseFaults, store: Any = None, **delivery: Any
) -> ReleaseSeen:
    """Version 1 deployed plainly, then version 2 released under `faults` (on `store`,
    by default a FakeRunStore)."""
    arch1 = release_arch(SHAPES[shape], "1", [100])
    arch2 = release_arch(
        [{**s, "deployment": {**s["deployment"], "verify": CHECK}} for s in SHAPES[shape]],
        "2",
        faults.steps,
    )
    scenario = Scenario(name=key, key=key, arch=arch2, tasks=[], **delivery)
    clock, bus = FakeClock(), FaultyBus(scenario, random.Random(key))
    deployer = CrashingDeployer(faults)
    rt = scenario.runtime(store or FakeRunStore(), bus, deployer, clock)

    def slow() -> None:
        with clock.jump(SLOW_BY):
            sweep(rt)

    rt.checks = ScriptedChecks(faults, slow)
    subscribe_all(bus, rt)
    first = DeployRequest(architecture=arch1.model_dump_json(), idempotency_key=f"{key}-v1")
    _drive(rt, clock, bus, first)
    before = {name: dict(p) for name, p in deployer.percents.items()}
    request = DeployRequest(architecture=arch2.model_dump_json(), idempotency_key=key)
    _drive(rt, clock, bus, request.model_copy(update={"release": True}))
    run_id = run_id_for(key)
    results = [a for topic, _, a in bus.published if topic == TOPIC_RESULTS]
    finished = sum(1 for a in results if a.get("run_id") == run_id)
    return ReleaseSeen(
        rt.store.get_result(run_id),
        rt.store.get_tasks(run_id),
        before,
        {name: dict(p) for name, p in deployer.percents.items()},
        finished,
    )


def _drive(rt: Runtime, clock: FakeClock, bus: FaultyBus, request: DeployRequest) -> None:
    run = dispatch_request(request, rt)
    bus.pump()
    sweep_until_finished(rt, clock, [run.run_id], bus.pump)


def release_violations(seen: ReleaseSeen) -> list[str]:
    """Every service ends on a verified revision or on what served before; a failed
    release ends with all traffic as it was; one result, announced once."""
    bad: list[str] = []
    if seen.result is None:
        return ["the release never finished"]
    if seen.finished != 1:
        bad.append(f"{seen.finished} RunFinished events")
    by = {(t.phase, t.service): t for t in seen.tasks}
    for name, percents in seen.after.items():
        verify = by.get((Phase.VERIFY, name))
        stage = by.get((Phase.STAGE, name))
        verified = (
            stage.release.revision
            if verify
            and stage
            and stage.release
            and verify.status is TaskStatus.SUCCEEDED
            and not verify.reused
            else None
        )
        allowed = set(seen.before.get(name, {})) | ({verified} if verified else set())
        stray = sorted(set(percents) - allowed)
        if stray:
            bad.append(f"{name} serves {stray}: neither verified nor what served before")
    if seen.result.status is not RunStatus.SUCCEEDED and seen.after != seen.before:
        bad.append(f"the release {seen.result.status}, yet traffic moved: {seen.after}")
    return bad


def task(seen: ReleaseSeen, phase: Phase, name: str) -> TaskRecord:
    return next(t for t in seen.tasks if (t.phase, t.service) == (phase, name))
