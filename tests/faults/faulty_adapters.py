"""The adapters that inject a scenario's faults: a bus that loses, poisons, redelivers and
reorders messages, a deployer that crashes, fails, retries, stalls or outlives its lease,
the worker crash they raise, and the fake clock every run keeps time by.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from google.api_core.exceptions import ServiceUnavailable
from pydantic import BaseModel

from shared.adapters.gcp.retry import RetryPolicy
from shared.architecture.model import DeploymentSpec
from shared.deployer import Target, current_target
from shared.errors import BackendError
from shared.messages import Phase, TaskStatus
from shared.ports import RunStore
from tests.fakes import FakeDeployer
from tests.faults.scenarios import START, Fault, Scenario


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
