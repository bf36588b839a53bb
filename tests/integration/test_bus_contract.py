"""The MessageBus contract, run against every implementation: the in-process bus, the
tests' FakeBus, and PubSubBus on the Pub/Sub emulator.

Each is driven through the port (`publish`, `publish_many`) and observed through its own
way of delivering: a subscriber for the in-process and fake buses, a pull subscription
on the emulator.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Protocol

import pytest

from shared.messages import Phase, TaskCompletion, TaskStatus
from shared.ports import MessageBus

TOPICS = ("tasks", "completions")
Delivery = tuple[bytes, dict[str, str]]


class Harness(Protocol):
    bus: MessageBus

    def listen(self, topic: str) -> None: ...

    def received(self, topic: str, count: int) -> list[Delivery]:
        """What arrived on `topic`: waits for `count` messages, and a moment for more."""
        ...


class Subscribed:
    """For buses that deliver to subscribers (InProcessBus, FakeBus)."""

    def __init__(self, bus: Any, settle: Any) -> None:
        self.bus = bus
        self._settle = settle
        self._lock = threading.Lock()
        self._got: dict[str, list[Delivery]] = {}

    def listen(self, topic: str) -> None:
        self._got[topic] = []

        def receive(data: bytes, attributes: Any) -> None:
            with self._lock:
                self._got[topic].append((data, dict(attributes)))

        self.bus.subscribe(topic, receive)

    def received(self, topic: str, count: int) -> list[Delivery]:
        self._settle()
        with self._lock:
            return list(self._got[topic])


class Pulled:
    """For PubSubBus: a pull subscription per topic on the emulator."""

    def __init__(self, bus: Any, subscriber: Any) -> None:
        self.bus = bus
        self._subscriber = subscriber
        self._subscriptions: dict[str, str] = {}

    def listen(self, topic: str) -> None:
        path = self.bus.topic_path(topic).replace("/topics/", "/subscriptions/") + "-contract"
        self._subscriber.create_subscription(name=path, topic=self.bus.topic_path(topic))
        self._subscriptions[topic] = path

    def received(self, topic: str, count: int) -> list[Delivery]:
        got: list[Delivery] = []
        deadline = time.monotonic() + (20 if count else 2)
        while time.monotonic() < deadline and (len(got) < count or not count):
            response = self._subscriber.pull(
                subscription=self._subscriptions[topic], max_messages=100, timeout=2
            )
            messages = response.received_messages
            if messages:
                self._subscriber.acknowledge(
                    subscription=self._subscriptions[topic], ack_ids=[m.ack_id for m in messages]
                )
                got.extend((m.message.data, dict(m.message.attributes)) for m in messages)
        return got


@pytest.fixture(params=["inprocess", "fake", "pubsub"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "inprocess":
        from shared.adapters.local.inprocess_bus import InProcessBus

        inprocess = InProcessBus(parallelism=4)
        yield Subscribed(inprocess, lambda: inprocess.drain(10))
        inprocess.close()
    elif request.param == "fake":
        from tests.fakes import FakeBus

        fake = FakeBus()
        yield Subscribed(fake, fake.deliver_all)
    else:
        from google.cloud import pubsub_v1

        from shared.adapters.gcp.pubsub_bus import PubSubBus

        emulator = request.getfixturevalue("pubsub_env")
        suffix = uuid.uuid4().hex[:10]
        pubsub = PubSubBus(emulator.project, {t: f"contract-{t}-{suffix}" for t in TOPICS})
        pubsub.ensure_topics()
        subscriber = pubsub_v1.SubscriberClient()
        yield Pulled(pubsub, subscriber)
        subscriber.close()
        pubsub.close()


def _completion(service: str) -> TaskCompletion:
    return TaskCompletion(
        run_id="r1",
        task_id=f"r1:build:{service}",
        phase=Phase.BUILD,
        service=service,
        status=TaskStatus.SUCCEEDED,
        image=f"registry.example/{service}@sha256:{'ab' * 32}",
    )


def test_a_message_arrives_as_its_exact_json_with_its_attributes(harness: Harness) -> None:
    harness.listen("completions")
    message = _completion("ingest")
    attributes = {"run_id": "r1", "task_id": message.task_id, "phase": "build"}

    harness.bus.publish("completions", message, attributes=attributes)

    assert harness.received("completions", 1) == [(message.model_dump_json().encode(), attributes)]


def test_a_message_without_attributes_arrives_with_none(harness: Harness) -> None:
    harness.listen("completions")
    message = _completion("ingest")
    harness.bus.publish("completions", message)
    assert harness.received("completions", 1) == [(message.model_dump_json().encode(), {})]


def test_every_message_of_a_batch_arrives_once_with_its_own_attributes(harness: Harness) -> None:
    harness.listen("tasks")
    batch = [(_completion(f"svc-{i:03}"), {"service": f"svc-{i:03}"}) for i in range(25)]

    harness.bus.publish_many("tasks", batch)

    got = harness.received("tasks", len(batch))
    expected = [(m.model_dump_json().encode(), a) for m, a in batch]
    assert sorted(got, key=lambda d: d[0]) == sorted(expected, key=lambda d: d[0])


def test_a_message_goes_to_its_topic_only(harness: Harness) -> None:
    harness.listen("tasks")
    harness.listen("completions")

    harness.bus.publish("tasks", _completion("ingest"), attributes={"kind": "task"})

    assert len(harness.received("tasks", 1)) == 1
    assert harness.received("completions", 0) == []
