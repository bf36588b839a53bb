"""Seeded fault scenarios for the event-driven core: the knobs every run uses, the faults,
and `draw_scenario`, which draws one run's architecture, admission caps and faults from a
seeded `random.Random`, so the same `(seed, name)` always gives the same scenario.

Faults that fail a task (`FAILING`) make the run fail; every other fault must be absorbed:
the run still succeeds, with each side effect done once and one result recorded.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from shared.architecture.model import Architecture
from shared.core.dispatcher import run_id_for
from shared.core.plan import plan_run
from shared.core.runtime import RunPolicy, Runtime
from shared.messages import (
    MESSAGE_VERSION,
    TOPIC_COMPLETIONS,
    TOPIC_TASKS,
    DeployRequest,
    Phase,
    TaskRecord,
    TaskStatus,
)
from shared.ports import RunStore
from tests.builders import architecture, service
from tests.fakes import FakeDeployer

if TYPE_CHECKING:
    from tests.faults.faulty_adapters import FakeClock


# The knobs every scenario runs with. The driver sweeps once the bus is quiet, then moves
# the clock on by STEP: past every lease and `republish_after` (so crashed and lost tasks
# are re-sent), far from every deadline (so only a slow task times out).
LEASE = 300.0
DEADLINE = 1800.0
REPUBLISH_AFTER = 120.0
RUN_DEADLINE = 7200.0
STEP = LEASE + 1
SLOW_BY = DEADLINE + 60  # how long a slow task takes: the sweep times it out meanwhile
MAX_STEPS = 10
START = datetime(2025, 1, 1, tzinfo=UTC)


class Fault(StrEnum):
    REDELIVERED = "message delivered again"
    REORDERED = "delivery out of order"
    REPEATED_REQUEST = "request delivered again"
    DROPPED_TASK = "task message lost"
    DROPPED_COMPLETION = "completion lost"
    CRASH = "worker crash before side effect"
    TRANSIENT_RETRIED = "transient API error, retried"
    TRANSIENT = "transient API error, retries spent"
    PERMANENT_BUILD = "permanent API error: build"
    PERMANENT_DEPLOY = "permanent API error: deploy"
    SLOW = "task past its deadline"
    STALE = "attempt outlived its lease, then failed"
    POISON_TASK = "poison task message, with ids"
    POISON_TASK_BARE = "poison task message, no ids"
    POISON_COMPLETION = "poison completion, with ids"
    POISON_COMPLETION_BARE = "poison completion, no ids"
    POISON_STRAY = "poison message, unknown task"


# A task hit by one of these ends failed (timed out, for SLOW), and so does its run.
FAILING = frozenset(
    {Fault.TRANSIENT, Fault.PERMANENT_BUILD, Fault.PERMANENT_DEPLOY, Fault.SLOW, Fault.POISON_TASK}
)
_CALL_FAULTS = (
    (Fault.CRASH, 0.3),
    (Fault.TRANSIENT_RETRIED, 0.15),
    (Fault.TRANSIENT, 0.08),
    (Fault.PERMANENT_BUILD, 0.1),
    (Fault.PERMANENT_DEPLOY, 0.1),
    (Fault.SLOW, 0.06),
    (Fault.STALE, 0.06),
)
_MESSAGE_FAULTS = (
    (Fault.DROPPED_TASK, TOPIC_TASKS, 0.3),
    (Fault.DROPPED_COMPLETION, TOPIC_COMPLETIONS, 0.3),
    (Fault.POISON_TASK, TOPIC_TASKS, 0.07),
    (Fault.POISON_TASK_BARE, TOPIC_TASKS, 0.12),
    (Fault.POISON_COMPLETION, TOPIC_COMPLETIONS, 0.12),
    (Fault.POISON_COMPLETION_BARE, TOPIC_COMPLETIONS, 0.12),
)
_POISON_KINDS = ("not json", "not utf-8", "wrong shape", "newer version")


@dataclass
class Scenario:
    """One run and the faults injected into it; records which faults actually happened."""

    name: str
    key: str
    arch: Architecture
    tasks: list[TaskRecord]
    build_only: bool = False
    images: dict[str, str] = field(default_factory=dict)
    build_concurrency: int | None = None
    deploy_concurrency: int | None = None
    redeliver: float = 0.0  # chance that a delivered message is delivered once more
    reorder: bool = False
    repeat_request: bool = False
    on_call: dict[str, Fault] = field(default_factory=dict)  # task id -> deployer fault
    on_message: dict[tuple[str, str], tuple[Fault, str]] = field(default_factory=dict)
    stray: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    triggered: Counter[Fault] = field(default_factory=Counter)
    hit: dict[str, Fault] = field(default_factory=dict)  # task id -> failing fault applied
    spent: list[tuple[str, Fault]] = field(default_factory=list)  # (task id, fault) applied
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def run_id(self) -> str:
        return run_id_for(self.key)

    def request(self) -> DeployRequest:
        return DeployRequest(
            architecture=self.arch.model_dump_json(),
            idempotency_key=self.key,
            build_only=self.build_only,
            images=self.images,
            requested_by="fault-injection",
        )

    def runtime(
        self, store: RunStore, bus: Any, deployer: FakeDeployer, clock: FakeClock
    ) -> Runtime:
        return Runtime(
            store=store,
            bus=bus,
            deployer=deployer,
            worker_id="fault-worker",
            in_process=True,  # one process: workers hand deploy slots over too
            clock=clock,
            policy=RunPolicy(
                leases=dict.fromkeys(Phase, LEASE),
                deadlines=dict.fromkeys(Phase, DEADLINE),
                republish_after=REPUBLISH_AFTER,
                run_deadline=RUN_DEADLINE,
                build_concurrency=self.build_concurrency,
                deploy_concurrency=self.deploy_concurrency,
            ),
        )

    def record(self, fault: Fault, task_id: str = "") -> None:
        with self._lock:
            self.triggered[fault] += 1
            if task_id:
                self.spent.append((task_id, fault))
            if fault in FAILING and task_id:
                self.hit.setdefault(task_id, fault)

    def take_call_fault(self, task_id: str) -> Fault | None:
        """The fault of this task's deployer call; each happens once, on the first call."""
        with self._lock:
            fault = self.on_call.pop(task_id, None)
        if fault is not None:
            self.record(fault, task_id)
        return fault

    def intercept(
        self, topic: str, data: bytes, attributes: Mapping[str, str]
    ) -> list[tuple[bytes, dict[str, str]]]:
        """What the wire carries for one published message: nothing (lost), poison, or it."""
        task_id = attributes.get("task_id", "")
        with self._lock:
            planned = self.on_message.pop((topic, task_id), None)
        if planned is None:
            return [(data, dict(attributes))]
        fault, kind = planned
        self.record(fault, task_id)
        if fault in (Fault.DROPPED_TASK, Fault.DROPPED_COMPLETION):
            return []
        keep_ids = fault in (Fault.POISON_TASK, Fault.POISON_COMPLETION)
        return [(poison(kind, data), dict(attributes) if keep_ids else {})]

    def describe(self) -> str:
        faults = {
            k.removeprefix(f"{self.run_id}:"): sorted(f.value for f in v)
            for k, v in _by_fault(self).items()
        }
        caps = f"caps build={self.build_concurrency} deploy={self.deploy_concurrency}"
        delivery = f"redeliver={self.redeliver} reorder={self.reorder}"
        return f"{self.name} run {self.run_id} ({caps}, {delivery}, faults {faults})"


def _by_fault(scenario: Scenario) -> dict[str, set[Fault]]:
    planned: dict[str, set[Fault]] = {}
    for task_id, fault in scenario.spent:
        planned.setdefault(task_id, set()).add(fault)
    for task_id, fault in scenario.on_call.items():
        planned.setdefault(task_id, set()).add(fault)
    for (_, task_id), (fault, _) in scenario.on_message.items():
        planned.setdefault(task_id, set()).add(fault)
    return planned


def poison(kind: str, data: bytes) -> bytes:
    """Bytes no handler can decode, made from a real message."""
    if kind == "not json":
        return b"{" + data[: len(data) // 2]
    if kind == "not utf-8":
        return b"\xff\xfe" + data[:16]
    if kind == "wrong shape":
        return b'{"run_id": 1, "phase": "unheard-of"}'
    newer = json.loads(data)
    newer["version"] = MESSAGE_VERSION + 1
    return json.dumps(newer).encode()


def draw_scenario(seed: int, name: str, **overrides: Any) -> Scenario:
    """One run's architecture, caps and faults, all from `(seed, name)`."""
    rng = random.Random(f"{seed}/{name}")
    arch = _draw_architecture(rng)
    key = f"faults-{seed}-{name}"
    build_only = rng.random() < 0.08
    names = [s.name for flow in arch.dataflows.values() for s in flow.services.values()]
    images = {}
    if not build_only and rng.random() < 0.1:
        prebuilt = rng.choice(names)
        images[prebuilt] = f"prebuilt.registry/{prebuilt}@sha256:{'0' * 64}"
    plan = plan_run(arch, run_id=run_id_for(key), build_only=build_only, images=images, now=START)
    scenario = Scenario(
        name=name,
        key=key,
        arch=arch,
        tasks=plan.tasks,
        build_only=build_only,
        images=images,
        build_concurrency=rng.choice([None, None, 1, 2]),
        deploy_concurrency=rng.choice([None, None, 1, 2]),
        redeliver=rng.choice([0.0, 0.0, 0.3]),
        reorder=rng.random() < 0.6,
        repeat_request=rng.random() < 0.15,
    )
    _draw_faults(rng, scenario)
    for attribute, value in overrides.items():
        setattr(scenario, attribute, value)
    return scenario


def _draw_architecture(rng: random.Random) -> Architecture:
    shape = rng.choice(["example", "wide", "chain", "diamond", "two dataflows"])
    if shape == "example":
        return architecture()  # the director, ingest -> enrich, notify
    size = rng.randint(1, 4)
    flows = {
        "wide": {"wide": [service(f"svc-{i}") for i in range(size)]},
        "chain": {"chain": [service(f"c{i}", *([f"c{i - 1}"] if i else [])) for i in range(size)]},
        "diamond": {
            "d": [
                service("top"),
                service("left", "top"),
                service("right", "top"),
                service("bottom", "left", "right"),
            ]
        },
        "two dataflows": {"a": [service("a1"), service("a2", "a1")], "b": [service("b1")]},
    }[shape]
    return architecture(flows, director=rng.random() < 0.5)


def _draw_faults(rng: random.Random, scenario: Scenario) -> None:
    runnable = [t for t in scenario.tasks if t.status is TaskStatus.WAITING]
    if not runnable:
        return
    builds = [t for t in runnable if t.phase is Phase.BUILD]
    deploys = [t for t in runnable if t.phase is not Phase.BUILD]
    for fault, chance in _CALL_FAULTS:
        pool = {Fault.PERMANENT_BUILD: builds, Fault.PERMANENT_DEPLOY: deploys}.get(fault, runnable)
        if pool and rng.random() < chance:
            scenario.on_call.setdefault(rng.choice(pool).task_id, fault)
    for fault, topic, chance in _MESSAGE_FAULTS:
        if rng.random() < chance:
            key = (topic, rng.choice(runnable).task_id)
            scenario.on_message.setdefault(key, (fault, rng.choice(_POISON_KINDS)))
    if any(fault is Fault.POISON_TASK for fault, _ in scenario.on_message.values()):
        # A repeated request, or the sweep of a worker outliving its lease, re-sends pending
        # tasks: the real message could then overtake the poisoned one, and whether the
        # task fails would be down to delivery order (either way is right).
        scenario.repeat_request = False
        scenario.on_call = {k: f for k, f in scenario.on_call.items() if f is not Fault.STALE}
    if rng.random() < 0.15:
        scenario.stray.append(_stray(rng, scenario.run_id))


def _stray(rng: random.Random, run_id: str) -> tuple[str, bytes, dict[str, str]]:
    topic = rng.choice([TOPIC_TASKS, TOPIC_COMPLETIONS])
    attributes = rng.choice(
        [
            {},
            {"run_id": run_id, "task_id": f"{run_id}:build:ghost", "kind": "task"},
            {"run_id": "r-unknown", "task_id": "r-unknown:build:ghost"},
        ]
    )
    return topic, rng.choice([b"{oops", b"\xff\xff\xff", b'{"task_id": []}']), attributes
