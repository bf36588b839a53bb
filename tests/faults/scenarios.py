"""Fault injection for the event-driven core: seeded scenarios, a bus and a deployer that
inject faults, the invariant checker, and the tally printed at the end of the session.

A `Scenario` is one run: an architecture, admission caps, and faults drawn from a seeded
`random.Random`. The suite's seed comes from `ARCHDEPLOY_FAULT_SEED`; when unset it is
CI_SEED in CI (so a red build is the code, not the draw) and random elsewhere. It is
printed with the table and in every failure, so any run replays exactly on the embedded
setup (the emulator setup replays the same faults; thread timing varies).

Faults that fail a task (`FAILING`) make the run fail; every other fault must be absorbed:
the run still succeeds, with each side effect done once and one result recorded.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from google.api_core.exceptions import ServiceUnavailable
from pydantic import BaseModel

from shared.adapters.gcp.retry import RetryPolicy
from shared.architecture.model import Architecture, DeploymentSpec
from shared.core.control import sweep
from shared.core.dispatcher import dispatch_request, run_id_for
from shared.core.handlers import subscribe_all
from shared.core.plan import plan_run
from shared.core.runtime import RunPolicy, Runtime
from shared.deployer import Target, current_target
from shared.errors import BackendError
from shared.messages import (
    MESSAGE_VERSION,
    TOPIC_COMPLETIONS,
    TOPIC_RESULTS,
    TOPIC_TASKS,
    DeployRequest,
    Phase,
    RunFinished,
    RunRecord,
    RunResult,
    RunStatus,
    TaskRecord,
    TaskStatus,
)
from shared.ports import RunStore
from tests.builders import architecture, service
from tests.fakes import FakeDeployer

SEED_ENV = "ARCHDEPLOY_FAULT_SEED"
# CI's seed: its emulator runs include a slow build under a repeated request (issue 12).
CI_SEED = 424461

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
_FAILED = (TaskStatus.FAILED, TaskStatus.TIMED_OUT)
_POISON_KINDS = ("not json", "not utf-8", "wrong shape", "newer version")


def suite_seed(environ: Mapping[str, str] = os.environ) -> tuple[int, str]:
    """The seed and where it came from: `ARCHDEPLOY_FAULT_SEED` (`random` asks for a fresh
    one, in CI too), else CI_SEED when `CI` is set, else a fresh random seed."""
    value = environ.get(SEED_ENV, "").strip()
    if value and value != "random":
        return int(value), f"from {SEED_ENV}"
    if not value and environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return CI_SEED, "fixed in CI"
    return random.SystemRandom().randrange(1, 1_000_000), "random"


class WorkerCrash(BaseException):
    """The worker's process died: nothing after the raise runs, nothing is stored, and the
    message is not acknowledged. A BaseException, so no handler's `except Exception`
    can turn it into a failed task."""


class FakeClock:
    """`Runtime.clock` that moves only when told.

    A jump in time and what must see it first (the scheduler's sweep) are one step to the
    workers: `jump` waits for the claims in flight (`claiming`), and holds new ones back
    until it is done. Otherwise a duplicate task message handled between the jump and the
    sweep would find every lease lapsed at once, and claim again a task whose worker is
    still at work (on the emulators, whether it did was down to thread timing)."""

    def __init__(self, start: datetime = START) -> None:
        self._now = start
        self._turn = threading.Condition()
        self._claims = 0
        self._jumping = False

    def __call__(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        with self.jump(seconds):
            pass

    @contextmanager
    def jump(self, seconds: float) -> Iterator[None]:
        """Move on by `seconds` once no claim is in flight; no claim starts until the
        block ends. Not reentrant: a claim inside the block would wait forever."""
        with self._turn:
            self._turn.wait_for(lambda: not self._jumping and not self._claims)
            self._jumping = True
            self._now += timedelta(seconds=seconds)
        try:
            yield
        finally:
            with self._turn:
                self._jumping = False
                self._turn.notify_all()

    @contextmanager
    def claiming(self) -> Iterator[None]:
        """Around a claim: never while the clock jumps, and a jump waits for it."""
        with self._turn:
            self._turn.wait_for(lambda: not self._jumping)
            self._claims += 1
        try:
            yield
        finally:
            with self._turn:
                self._claims -= 1
                self._turn.notify_all()


# --- scenarios ---------------------------------------------------------------------------


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


# --- the fault-injecting bus and deployer ------------------------------------------------

Subscriber = Callable[[bytes, Mapping[str, str]], None]


@dataclass
class _Envelope:
    topic: str
    data: bytes
    attributes: dict[str, str]
    deliveries: int = 0


class FaultyBus:
    """`MessageBus` that delivers one message at a time when pumped, through the scenario's
    faults: messages lost or poisoned on the wire, delivered again, out of order. A message
    whose handler crashed is not acknowledged, so it comes again (as Pub/Sub redelivers)."""

    max_deliveries = 5

    def __init__(self, scenario: Scenario, rng: random.Random) -> None:
        self.scenario = scenario
        self.rng = rng
        self.subscribers: dict[str, list[Subscriber]] = {}
        self.published: list[tuple[str, bytes, dict[str, str]]] = []  # what the core sent
        self.queue: deque[_Envelope] = deque()
        self.errors: list[str] = []

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        self.subscribers.setdefault(topic, []).append(subscriber)

    def publish(
        self, topic: str, message: BaseModel, *, attributes: Mapping[str, str] | None = None
    ) -> None:
        data, attrs = message.model_dump_json().encode(), dict(attributes or {})
        self.published.append((topic, data, attrs))
        for wire, wire_attributes in self.scenario.intercept(topic, data, attrs):
            self.queue.append(_Envelope(topic, wire, wire_attributes))

    def publish_many(
        self, topic: str, messages: Sequence[tuple[BaseModel, Mapping[str, str]]]
    ) -> None:
        for message, attributes in messages:
            self.publish(topic, message, attributes=attributes)

    def inject(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> None:
        self.queue.append(_Envelope(topic, data, dict(attributes)))

    def pump(self, limit: int | None = None) -> None:
        """Deliver until the queue is empty (or `limit` deliveries have been made)."""
        for delivered in itertools.count():
            if not self.queue or (limit is not None and delivered >= limit):
                return
            if delivered > 20_000:
                raise AssertionError(f"the bus never went quiet: {len(self.queue)} queued")
            self._deliver_one()

    def _deliver_one(self) -> None:
        if self.scenario.reorder and len(self.queue) > 1:
            skip = self.rng.randrange(len(self.queue))
            if skip:
                self.scenario.record(Fault.REORDERED)
                self.queue.rotate(-skip)
        envelope = self.queue.popleft()
        envelope.deliveries += 1
        try:
            for subscriber in self.subscribers.get(envelope.topic, []):
                subscriber(envelope.data, envelope.attributes)
        except WorkerCrash:
            self.queue.append(envelope)  # never acknowledged: delivered again
            return
        except Exception as exc:  # a handler error: Pub/Sub would redeliver, then dead-letter
            self.errors.append(f"{envelope.topic} handler raised {type(exc).__name__}: {exc}")
            if envelope.deliveries < self.max_deliveries:
                self.queue.append(envelope)
            return
        if envelope.deliveries == 1 and self.rng.random() < self.scenario.redeliver:
            self.scenario.record(Fault.REDELIVERED)
            self.queue.append(envelope)


@dataclass(frozen=True)
class Effect:
    """One side effect the deployer really performed: an image built, a service deployed."""

    run_id: str
    phase: Phase
    service: str
    output: str  # the image URI or the URL
    image: str | None  # for deploys: the image deployed
    director_url: str | None  # for deploys: the SERVICE_DIRECTOR_URL it was given


class FaultyDeployer(FakeDeployer):
    """`FakeDeployer` that applies each run's deployer faults and logs every side effect.

    Each build or deploy produces a new, unique output, so a result can be traced to the
    call that produced it. Transient errors go through the GCP adapters' own retry policy,
    as a real API error would. With a `store`, it also checks, as each side effect starts,
    that the run's admission cap holds.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scenarios: dict[str, Scenario] = {}
        self.effects: list[Effect] = []
        self.store: RunStore | None = None
        self.on_slow: Callable[[], None] = lambda: None
        self.on_stale: Callable[[], None] = lambda: None
        self.violations: list[tuple[str, str]] = []  # (run id, what went wrong)
        self._serial = itertools.count(1)

    def register(self, scenario: Scenario) -> None:
        self.scenarios[scenario.run_id] = scenario

    def build(
        self, service_name: str, spec: DeploymentSpec, *, target: Target | None = None
    ) -> str:
        return self._call(Phase.BUILD, service_name, spec, target or current_target())

    def deploy_service(
        self,
        service_name: str,
        service_account_email: str,
        spec: DeploymentSpec,
        *,
        target: Target | None = None,
    ) -> str:
        target = target or current_target()
        phase = Phase(target.task_id.split(":")[1]) if target.task_id else Phase.DEPLOY
        return self._call(phase, service_name, spec, target)

    def _call(self, phase: Phase, service: str, spec: DeploymentSpec, target: Target) -> str:
        scenario = self.scenarios.get(target.run_id)
        fault = scenario.take_call_fault(target.task_id) if scenario else None
        verb = "building" if phase is Phase.BUILD else "deploying"
        if fault is Fault.CRASH:
            self._event("crash", service)
            raise WorkerCrash(f"worker died {verb} {service}")
        self._check_start(phase, target)
        if fault is Fault.SLOW:
            self.on_slow()
        if fault is Fault.STALE:  # stuck retrying past its lease: the task is done again
            self.on_stale()
            raise BackendError(f"{verb} {service}: UNAVAILABLE: gave up", retryable=True)
        if fault in (Fault.PERMANENT_BUILD, Fault.PERMANENT_DEPLOY):
            self._event(f"{phase.value}-failed", service)
            raise BackendError(f"{verb} {service}: PERMISSION_DENIED: caller lacks permission")
        policy = RetryPolicy(attempts=3, base_delay=0.0)
        failures = {Fault.TRANSIENT: policy.attempts, Fault.TRANSIENT_RETRIED: 1}
        answers = iter(range(failures.get(fault, 0) if fault else 0, -1, -1))

        def attempt() -> str:
            if next(answers):
                raise ServiceUnavailable("the backend is unavailable")  # type: ignore[no-untyped-call]
            return self._produce(phase, service, spec, target)

        api_call = "CreateBuild" if phase is Phase.BUILD else "CreateService"
        return policy.call(attempt, context=f"{verb} {service}", api_call=api_call)

    def _produce(self, phase: Phase, service: str, spec: DeploymentSpec, target: Target) -> str:
        serial = next(self._serial)
        if phase is Phase.BUILD:
            digest = hashlib.sha256(f"{target.run_id}:{service}:{serial}".encode()).hexdigest()
            output, image, director_url = f"fake.registry/{service}@sha256:{digest}", None, None
        else:
            output, image = f"https://{service}-{serial}.fake.run", spec.image
            director_url = spec.environment_vars.get("SERVICE_DIRECTOR_URL")
        with self._lock:
            if phase is Phase.BUILD:
                self.built.append((service, spec))
            else:
                self.deploys.append((service, "", spec))
            self.effects.append(Effect(target.run_id, phase, service, output, image, director_url))
        self._event(f"{phase.value}-end", service)
        return output

    def _check_start(self, phase: Phase, target: Target) -> None:
        scenario = self.scenarios.get(target.run_id)
        if self.store is None or scenario is None:
            return
        tasks = self.store.get_tasks(target.run_id, phase)
        cap = {Phase.BUILD: scenario.build_concurrency, Phase.DEPLOY: scenario.deploy_concurrency}
        in_flight = [t for t in tasks if t.status in (TaskStatus.PENDING, TaskStatus.RUNNING)]
        if cap.get(phase) is not None and len(in_flight) > cast(int, cap[phase]):
            self._violation(target, f"{len(in_flight)} {phase.value}s in flight, cap {cap[phase]}")

    def _violation(self, target: Target, text: str) -> None:
        with self._lock:
            self.violations.append((target.run_id, text))


class StoreProbe:
    """Passes every call to the store it wraps; counts `finish_run` calls and wins per run.
    Claims go through the clock's `claiming`, so none falls in a jump. With `strict_halt`,
    checks that no build is released once a build of its run failed (queued builds are
    not started); only where no other aggregator can race the check."""

    def __init__(self, store: Any, clock: FakeClock, *, strict_halt: bool = False) -> None:
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        self.strict_halt = strict_halt
        self.finish_calls: Counter[str] = Counter()
        self.finish_wins: Counter[str] = Counter()
        self.violations: list[tuple[str, str]] = []  # (run id, what went wrong)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def claim_task(
        self, task_id: str, *, worker: str, lease_seconds: float, now: datetime
    ) -> TaskRecord | None:
        with self._clock.claiming():
            claimed: TaskRecord | None = self._store.claim_task(
                task_id, worker=worker, lease_seconds=lease_seconds, now=now
            )
        return claimed

    def release_task(
        self, task_id: str, *, spec_updates: Mapping[str, Any] | None = None, now: datetime
    ) -> TaskRecord | None:
        released: TaskRecord | None = self._store.release_task(
            task_id, spec_updates=spec_updates, now=now
        )
        if self.strict_halt and released is not None and released.phase is Phase.BUILD:
            builds = self._store.get_tasks(released.run_id, Phase.BUILD)
            failed = [t.service for t in builds if t.status in _FAILED]
            if failed:
                text = f"build of {released.service} released after the build of {failed} failed"
                self.violations.append((released.run_id, text))
        return released

    def finish_run(self, run_id: str, result: RunResult) -> bool:
        won = bool(self._store.finish_run(run_id, result))
        with self._lock:
            self.finish_calls[run_id] += 1
            self.finish_wins[run_id] += won
        return won

    def as_store(self) -> RunStore:
        return cast(RunStore, self)


# --- the invariants ----------------------------------------------------------------------


@dataclass
class Observed:
    """What one run left behind: the store's records, the bus's events, the deployer's log."""

    scenario: Scenario
    run: RunRecord | None
    result: RunResult | None
    tasks: list[TaskRecord]
    finish_calls: int
    finish_wins: int
    finished: list[RunFinished]
    effects: list[Effect]
    notes: list[str]  # violations seen while it ran


def observe(
    scenario: Scenario,
    probe: StoreProbe,
    published: Iterable[tuple[str, bytes, Mapping[str, str]]],
    deployer: FaultyDeployer,
    notes: Iterable[str] = (),
) -> Observed:
    run_id = scenario.run_id
    finished = [
        RunFinished.model_validate_json(data)
        for topic, data, attributes in published
        if topic == TOPIC_RESULTS and attributes.get("run_id") == run_id
    ]
    return Observed(
        scenario=scenario,
        run=probe.get_run(run_id),
        result=probe.get_result(run_id),
        tasks=probe.get_tasks(run_id),
        finish_calls=probe.finish_calls[run_id],
        finish_wins=probe.finish_wins[run_id],
        finished=finished,
        effects=[e for e in deployer.effects if e.run_id == run_id],
        notes=[
            *notes,
            *(text for rid, text in deployer.violations if rid == run_id),
            *(text for rid, text in probe.violations if rid == run_id),
        ],
    )


def check(o: Observed) -> list[str]:
    """Every invariant the run broke, in words; empty when it kept them all."""
    if o.result is None:
        states = {t.task_id.split(":", 1)[1]: t.status.value for t in o.tasks}
        return [*o.notes, f"the run never finished: {states}"]
    bad = list(o.notes)
    if o.finish_wins != 1 or o.finish_calls < 1:
        bad.append(f"finish_run won {o.finish_wins} times in {o.finish_calls} calls")
    if len(o.finished) != 1:
        bad.append(f"{len(o.finished)} RunFinished events on the results topic")
    elif o.finished[0].result != o.result:
        bad.append("the RunFinished event and the stored result differ")
    if o.run is None or o.run.status is not o.result.status:
        bad.append(f"the run record says {o.run and o.run.status}, the result {o.result.status}")
    expected = RunStatus.FAILED if o.scenario.hit else RunStatus.SUCCEEDED
    if o.result.status is not expected:
        bad.append(f"status {o.result.status}, expected {expected} (hit: {o.scenario.hit})")
    return bad + _outputs(o) + _once(o) + _after_failed_build(o) + _where_hit(o) + _others(o)


def _outputs(o: Observed) -> list[str]:
    """The result's images and URLs are the ones the deployer produced in this run, and
    every deploy got its service's image and the director's URL."""
    assert o.result is not None
    built = {e.service: e.output for e in o.effects if e.phase is Phase.BUILD}
    built.update(o.scenario.images)
    urls = {e.service: e.output for e in o.effects if e.phase is not Phase.BUILD}
    bad = [
        f"image of {s} is {i}, not what was built"
        for s, i in o.result.images.items()
        if built.get(s) != i
    ]
    bad += [
        f"url of {s} is {u}, not what was deployed"
        for s, u in o.result.urls.items()
        if urls.get(s) != u
    ]
    for task in o.tasks:
        if task.status is TaskStatus.SUCCEEDED:
            reported = o.result.images if task.phase is Phase.BUILD else o.result.urls
            if reported.get(task.service) != (
                task.image if task.phase is Phase.BUILD else task.url
            ):
                bad.append(f"{task.task_id} succeeded but its output is not in the result")
    director = next((t.service for t in o.tasks if t.phase is Phase.DIRECTOR), None)
    for effect in o.effects:
        if effect.phase is not Phase.BUILD and effect.image != built.get(effect.service):
            bad.append(f"{effect.service} was deployed with {effect.image}, not its build")
        if effect.phase is Phase.DEPLOY and director and effect.director_url != urls.get(director):
            bad.append(f"{effect.service} got director URL {effect.director_url}")
    return bad


def _once(o: Observed) -> list[str]:
    counts = Counter((e.phase.value, e.service) for e in o.effects)
    return [f"{phase} of {svc} ran {n} times" for (phase, svc), n in counts.items() if n > 1]


def _after_failed_build(o: Observed) -> list[str]:
    failed = [
        t.service
        for t in o.tasks
        if t.phase is Phase.BUILD and t.status is not TaskStatus.SUCCEEDED
    ]
    deployed = [e.service for e in o.effects if e.phase is not Phase.BUILD]
    return (
        [f"deployed {deployed} although the build of {failed} failed"]
        if failed and deployed
        else []
    )


def _where_hit(o: Observed) -> list[str]:
    """Each failing fault shows on the task it hit, and its error is in the result."""
    assert o.result is not None
    tasks = {t.task_id: t for t in o.tasks}
    errors = {(e.service, e.phase) for e in o.result.errors}
    bad = []
    for task_id, fault in o.scenario.hit.items():
        task = tasks[task_id]
        allowed = {TaskStatus.TIMED_OUT} if fault is Fault.SLOW else {TaskStatus.FAILED}
        if Fault.SLOW in o.scenario.triggered:  # its sweep may time out what is in flight
            allowed.add(TaskStatus.TIMED_OUT)
        if task.status not in allowed:
            bad.append(f"{task_id} hit by {fault.value!r} ended {task.status}")
        if (task.service, task.phase) not in errors:
            bad.append(f"{task_id} hit by {fault.value!r} has no error in the result")
    return bad


def _others(o: Observed) -> list[str]:
    """A deploy that fails stops only what depends on it: every other deploy succeeds."""
    hit = [t for t in o.tasks if t.task_id in o.scenario.hit]
    if Fault.SLOW in o.scenario.triggered or any(t.phase is not Phase.DEPLOY for t in hit):
        return []
    deps = {t.service: t.depends_on for t in o.tasks if t.phase is Phase.DEPLOY}
    down = {t.service for t in hit}
    while grown := {s for s, d in deps.items() if s not in down and down.intersection(d)}:
        down |= grown
    return [
        f"{t.task_id} ended {t.status} though nothing it needs failed"
        for t in o.tasks
        if t.phase is Phase.DEPLOY
        and t.service not in down
        and t.status is not TaskStatus.SUCCEEDED
    ]


# --- driving a run -----------------------------------------------------------------------


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
    probe = StoreProbe(store, clock, strict_halt=True)
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


# --- the table -----------------------------------------------------------------------------


@dataclass
class Tally:
    """Runs, faults and violations over the session, printed as a table at its end."""

    seed: int
    origin: str = ""  # how the seed was chosen: fixed in CI, from the environment, random
    runs: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    faults: Counter[Fault] = field(default_factory=Counter)
    fault_runs: Counter[Fault] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, setup: str, observed: Observed, violations: list[str]) -> None:
        self.runs[setup] += 1
        status = observed.result.status.value if observed.result else "unfinished"
        self.statuses[(setup, status)] += 1
        self.violations[setup] += len(violations)
        self.faults.update(observed.scenario.triggered)
        self.fault_runs.update(set(observed.scenario.triggered))
        self.examples += [f"{observed.scenario.describe()}: {v}" for v in violations][:5]

    def lines(self) -> list[str]:
        origin = f"{self.origin}; " if self.origin else ""
        out = [f"seed {self.seed} ({origin}replay: {SEED_ENV}={self.seed})", ""]
        out.append(f"{'setup':<44}{'runs':>6}{'succeeded':>11}{'failed':>8}{'violations':>12}")
        for setup in sorted(self.runs):
            out.append(
                f"{setup:<44}{self.runs[setup]:>6}{self.statuses[(setup, 'succeeded')]:>11}"
                f"{self.statuses[(setup, 'failed')]:>8}{self.violations[setup]:>12}"
            )
        total = sum(self.runs.values())
        succeeded = sum(n for (_, status), n in self.statuses.items() if status == "succeeded")
        failed = sum(n for (_, status), n in self.statuses.items() if status == "failed")
        violations = sum(self.violations.values())
        out.append(f"{'total':<44}{total:>6}{succeeded:>11}{failed:>8}{violations:>12}")
        out += ["", f"{'fault injected':<44}{'times':>6}{'in runs':>11}"]
        for fault in Fault:
            out.append(f"{fault.value:<44}{self.faults[fault]:>6}{self.fault_runs[fault]:>11}")
        out += ["", f"invariant violations: {violations}", *self.examples[:20]]
        return out
