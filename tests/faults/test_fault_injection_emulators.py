"""The core under injected faults on Google Cloud's parts: PubSubBus and FirestoreRunStore on
the emulators, fed by streaming-pull subscriptions the way push subscriptions feed the
functions. Runs go in small concurrent batches (a run slower than its deadline goes alone:
its clock jump would time out the others' tasks); the clock moves only when the bus is
quiet, or when a slow task jumps it, and then the sweep runs before any claim sees the new
time (`FakeClock.jump`), so no lease runs out under a worker that is still working.

The faults are the embedded suite's, drawn from the same seed, except a worker outliving its
lease, which the embedded suite covers (here its clock jump would hit every worker in flight).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
from google.cloud import pubsub_v1
from pydantic import BaseModel

from shared.adapters.gcp.firestore_store import FirestoreRunStore
from shared.adapters.gcp.pubsub_bus import PubSubBus
from shared.core import handlers
from shared.core.dispatcher import dispatch_request
from shared.core.runtime import Runtime
from shared.errors import BackendError
from shared.messages import TOPIC_COMPLETIONS, TOPIC_RESULTS, TOPIC_TASKS
from tests.faults.driver import slow_task, sweep_until_finished
from tests.faults.faulty_adapters import FakeClock, FaultyDeployer, WorkerCrash
from tests.faults.invariants import Observed, StoreProbe, check, observe
from tests.faults.scenarios import Fault, Scenario, draw_scenario
from tests.faults.tally import SEED_ENV, Tally
from tests.integration.emulators import Emulator

RUNS = 24
BATCH = 6
QUIET_TIMEOUT = 120.0  # seconds: a hang guard, never waited out by a run that passes
REORDER_JITTER = 0.03  # seconds
MAX_DELIVERIES = 5  # then the message is dead-lettered, as the subscriptions are configured
PUMPED = (TOPIC_TASKS, TOPIC_COMPLETIONS)
Handler = Callable[[bytes, Mapping[str, str], Runtime, str], object]


class FaultyPubSubBus:
    """`MessageBus` over `PubSubBus`: each run's messages go through its wire faults (lost,
    or sent as poison with the raw publisher); counts what the pump must handle."""

    def __init__(self, inner: PubSubBus, publisher: Any) -> None:
        self.inner = inner
        self.publisher = publisher
        self.scenarios: dict[str, Scenario] = {}
        self.published: list[tuple[str, bytes, dict[str, str]]] = []
        self.sent = 0
        self._lock = threading.Lock()

    def publish(
        self, topic: str, message: BaseModel, *, attributes: Mapping[str, str] | None = None
    ) -> None:
        self.publish_many(topic, [(message, attributes or {})])

    def publish_many(
        self, topic: str, messages: Sequence[tuple[BaseModel, Mapping[str, str]]]
    ) -> None:
        plain: list[tuple[BaseModel, Mapping[str, str]]] = []
        raw: list[tuple[bytes, dict[str, str]]] = []
        for message, attributes in messages:
            data, attrs = message.model_dump_json().encode(), dict(attributes)
            with self._lock:
                self.published.append((topic, data, attrs))
            scenario = self.scenarios.get(attrs.get("run_id", ""))
            wire = scenario.intercept(topic, data, attrs) if scenario else [(data, attrs)]
            if wire == [(data, attrs)]:
                plain.append((message, attrs))
            else:
                raw += wire
        self._count(topic, len(plain) + len(raw))
        try:
            if plain:
                self.inner.publish_many(topic, plain)
            for data, attrs in raw:
                self._send_raw(topic, data, attrs)
        except Exception:  # refused: nothing for the pump to wait for (the caller retries)
            self._count(topic, -(len(plain) + len(raw)))
            raise

    def inject(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> None:
        """Publish bytes as they are (a poison message nobody sent)."""
        self._count(topic, 1)
        self._send_raw(topic, data, attributes)

    def _send_raw(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> None:
        self.publisher.publish(self.inner.topic_path(topic), data, **attributes).result(timeout=10)

    def _count(self, topic: str, n: int) -> None:
        if topic in PUMPED:
            with self._lock:
                self.sent += n


class Pump:
    """Streaming-pull subscriptions feeding the handlers; acks on success, nacks what failed
    (a crashed worker never acks), dead-letters after MAX_DELIVERIES. For runs that ask, it
    delays handling by a random jitter (reordering what arrives together) and delivers a
    message again now and then (as Pub/Sub does when an ack is late)."""

    def __init__(self, bus: FaultyPubSubBus, rng: random.Random) -> None:
        self.subscriber = pubsub_v1.SubscriberClient()
        self.bus = bus
        self.rng = rng
        self.rt: Runtime | None = None
        self.acked: set[str] = set()
        self.deliveries: Counter[str] = Counter()
        self.errors: list[tuple[str, str]] = []  # (run id, what a handler raised)
        self.active = 0
        self.futures: list[Any] = []
        self._lock = threading.Lock()
        self._handled = threading.Condition(self._lock)  # notified as each handler ends

    def route(self, topic: str, handler: Handler) -> None:
        path = self.bus.inner.topic_path(topic).replace("/topics/", "/subscriptions/") + "-sub"
        self.subscriber.create_subscription(
            request={
                "name": path,
                "topic": self.bus.inner.topic_path(topic),
                "ack_deadline_seconds": 60,
            }
        )

        def callback(message: Any) -> None:
            with self._lock:
                self.active += 1
                self.deliveries[message.message_id] += 1
            try:
                self._handle(handler, message)
            finally:
                with self._handled:
                    self.active -= 1
                    self._handled.notify_all()

        # Shutting down waits for handlers in flight: they publish, and the bus closes next.
        pull = self.subscriber.subscribe(path, callback=callback, await_callbacks_on_shutdown=True)
        self.futures.append(pull)

    def _handle(self, handler: Handler, message: Any) -> None:
        attributes = dict(message.attributes)
        assert self.rt is not None
        scenario = self.bus.scenarios.get(attributes.get("run_id", ""))
        if scenario is not None and scenario.reorder:
            with self._lock:
                delay = self.rng.uniform(0, REORDER_JITTER)
            scenario.record(Fault.REORDERED)
            time.sleep(delay)  # messages delivered together are handled in another order
        try:
            handler(message.data, attributes, self.rt, message.message_id)
        except WorkerCrash:
            message.nack()  # the process died: never acknowledged, so delivered again
            return
        except Exception as exc:  # answered 500: delivered again, then dead-lettered
            retryable = isinstance(exc, BackendError) and exc.retryable
            if not retryable:
                run_id = attributes.get("run_id", "")
                self.errors.append((run_id, f"handler raised {type(exc).__name__}: {exc}"))
            if self.deliveries[message.message_id] < MAX_DELIVERIES:
                message.nack()
                return
            handlers.on_dead_letter(message.data, attributes, self.rt, message.message_id)
        again = scenario is not None and self.deliveries[message.message_id] == 1
        with self._lock:
            again = again and self.rng.random() < (scenario.redeliver if scenario else 0)
        if again and scenario is not None:
            scenario.record(Fault.REDELIVERED)
            message.nack()
            return
        message.ack()
        with self._lock:
            self.acked.add(message.message_id)

    def wait_quiet(self) -> None:
        """Until every message sent to the pumped topics has been handled and acked: woken
        as each handler ends; the timeout only stops a run that hangs."""
        with self._handled:
            quiet = self._handled.wait_for(
                lambda: self.active == 0 and len(self.acked) >= self.bus.sent,
                timeout=QUIET_TIMEOUT,
            )
            if not quiet:
                raise AssertionError(
                    f"the bus never went quiet: {len(self.acked)} of {self.bus.sent} handled"
                )

    def close(self) -> None:
        for future in self.futures:
            future.cancel()
            future.result(timeout=10)
        self.subscriber.close()


class Cloud:
    def __init__(self, bus: FaultyPubSubBus, store: FirestoreRunStore, pump: Pump) -> None:
        self.bus, self.pump = bus, pump
        self.clock = FakeClock()
        self.probe = StoreProbe(store, self.clock)
        self.deployer = FaultyDeployer()
        self.deployer.store = self.probe.as_store()


@pytest.fixture
def cloud(pubsub_env: Emulator, firestore_client: Any) -> Iterator[Cloud]:
    suffix = uuid.uuid4().hex[:8]
    names = ("requests", "tasks", "completions", "results")
    inner = PubSubBus(pubsub_env.project, {n: f"faults-{n}-{suffix}" for n in names}, timeout=10)
    inner.ensure_topics()
    store = FirestoreRunStore(
        project_id=pubsub_env.project, collection=f"faults-{suffix}", client=firestore_client
    )
    publisher = pubsub_v1.PublisherClient()
    bus = FaultyPubSubBus(inner, publisher)
    pump = Pump(bus, random.Random(suffix))
    pump.route(TOPIC_TASKS, handlers.on_task)
    pump.route(TOPIC_COMPLETIONS, handlers.on_completion)
    yield Cloud(bus, store, pump)
    pump.close()
    publisher.stop()
    inner.close()


def _scenarios(seed: int) -> list[list[Scenario]]:
    """RUNS scenarios in batches: one per run that will be slow, the rest BATCH at a time."""
    scenarios = [draw_scenario(seed, f"emulators-{i}") for i in range(RUNS)]
    for scenario in scenarios:
        scenario.on_call = {k: f for k, f in scenario.on_call.items() if f is not Fault.STALE}
    slow = [s for s in scenarios if Fault.SLOW in s.on_call.values()]
    rest = [s for s in scenarios if s not in slow]
    return [[s] for s in slow] + [rest[i : i + BATCH] for i in range(0, len(rest), BATCH)]


def _run_batch(cloud: Cloud, batch: list[Scenario]) -> list[Observed]:
    # One runtime per batch: the admission caps are the runtime's, so the batch shares them.
    first = batch[0]
    for scenario in batch:
        scenario.build_concurrency = first.build_concurrency
        scenario.deploy_concurrency = first.deploy_concurrency
    cloud.probe.deploy_cap = first.deploy_concurrency
    rt = first.runtime(cloud.probe.as_store(), cloud.bus, cloud.deployer, cloud.clock)
    cloud.pump.rt = rt
    cloud.deployer.on_slow = slow_task(cloud.clock, rt)
    for scenario in batch:
        cloud.bus.scenarios[scenario.run_id] = scenario
        cloud.deployer.register(scenario)
        for topic, data, attributes in scenario.stray:
            scenario.record(Fault.POISON_STRAY)
            cloud.bus.inject(topic, data, attributes)
    for scenario in batch:
        dispatch_request(scenario.request(), rt)
        if scenario.repeat_request:
            scenario.record(Fault.REPEATED_REQUEST)
            dispatch_request(scenario.request(), rt)
    cloud.pump.wait_quiet()
    sweep_until_finished(rt, cloud.clock, [s.run_id for s in batch], cloud.pump.wait_quiet)
    return [
        observe(
            s,
            cloud.probe,
            [p for p in cloud.bus.published if p[0] == TOPIC_RESULTS],
            cloud.deployer,
            [text for run_id, text in cloud.pump.errors if run_id == s.run_id],
        )
        for s in batch
    ]


def test_runs_on_pubsub_and_firestore_keep_every_invariant_under_random_faults(
    cloud: Cloud, tally: Tally
) -> None:
    failures = []
    for batch in _scenarios(tally.seed):
        for seen in _run_batch(cloud, batch):
            violations = check(seen)
            tally.add("emulators: PubSubBus + FirestoreRunStore", seen, violations)
            failures += [f"{seen.scenario.describe()}:\n    {v}" for v in violations]
    replay = f"replay with {SEED_ENV}={tally.seed}"
    assert not failures, f"{len(failures)} invariant violations ({replay}):\n" + "\n".join(
        failures[:15]
    )
