"""PubSubBus against the real Pub/Sub emulator."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from shared.adapters.gcp.pubsub_bus import PubSubBus, _translated
from shared.errors import BackendError
from shared.messages import Phase, TaskCompletion, TaskStatus
from tests.integration.emulators import Emulator

LOGICAL_TOPICS = ("requests", "tasks", "completions", "results")


@pytest.fixture
def bus(pubsub_env: Emulator) -> Iterator[PubSubBus]:
    suffix = uuid.uuid4().hex[:10]
    topics = {name: f"archdeploy-{name}-{suffix}" for name in LOGICAL_TOPICS}
    bus = PubSubBus(pubsub_env.project, topics, timeout=10)
    bus.ensure_topics()
    bus.ensure_topics()  # a second call finds them all and changes nothing
    yield bus
    bus.close()


@pytest.fixture
def subscriber(pubsub_env: Emulator) -> Iterator[Any]:
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


def _subscribe(subscriber: Any, bus: PubSubBus, topic: str) -> str:
    path = bus.topic_path(topic).replace("/topics/", "/subscriptions/") + "-sub"
    subscriber.create_subscription(name=path, topic=bus.topic_path(topic))
    return path


def _pull(subscriber: Any, subscription: str, count: int, within: float = 20) -> list[Any]:
    received: list[Any] = []
    deadline = time.monotonic() + within
    while len(received) < count and time.monotonic() < deadline:
        response = subscriber.pull(subscription=subscription, max_messages=100, timeout=5)
        if response.received_messages:
            ack_ids = [m.ack_id for m in response.received_messages]
            subscriber.acknowledge(subscription=subscription, ack_ids=ack_ids)
            received.extend(m.message for m in response.received_messages)
    return received


def _completion(service: str) -> TaskCompletion:
    return TaskCompletion(
        run_id="r1",
        task_id=f"r1:build:{service}",
        phase=Phase.BUILD,
        service=service,
        status=TaskStatus.SUCCEEDED,
        image=f"registry.example/{service}@sha256:{'ab' * 32}",
    )


def test_a_published_message_arrives_with_its_exact_json_and_attributes(
    bus: PubSubBus, subscriber: Any
) -> None:
    subscription = _subscribe(subscriber, bus, "completions")
    message = _completion("ingest")
    attributes = {"run_id": "r1", "task_id": message.task_id, "phase": "build"}

    bus.publish("completions", message, attributes=attributes)

    [received] = _pull(subscriber, subscription, 1)
    assert received.data == message.model_dump_json().encode()
    assert dict(received.attributes) == attributes
    assert TaskCompletion.model_validate_json(received.data) == message


def test_publish_many_delivers_every_one_of_200_messages(bus: PubSubBus, subscriber: Any) -> None:
    subscription = _subscribe(subscriber, bus, "tasks")
    batch = [(_completion(f"svc-{i:03d}"), {"n": str(i)}) for i in range(200)]

    bus.publish_many("tasks", batch)

    received = _pull(subscriber, subscription, 200)
    assert sorted(m.attributes["n"] for m in received) == sorted(str(i) for i in range(200))
    bodies = {m.data for m in received}
    assert bodies == {msg.model_dump_json().encode() for msg, _ in batch}


def test_an_unknown_logical_topic_is_refused_with_the_known_names(bus: PubSubBus) -> None:
    with pytest.raises(BackendError) as caught:
        bus.publish("audit", _completion("x"))

    assert "audit" in str(caught.value)
    for name in LOGICAL_TOPICS:
        assert name in str(caught.value)
    assert caught.value.retryable is False


def test_publishing_to_a_topic_that_does_not_exist_is_a_permanent_error_naming_it(
    pubsub_env: Emulator,
) -> None:
    missing = f"archdeploy-missing-{uuid.uuid4().hex[:10]}"
    bus = PubSubBus(pubsub_env.project, {"results": missing}, timeout=10)
    with bus, pytest.raises(BackendError) as caught:
        bus.publish("results", _completion("x"))

    assert missing in str(caught.value)
    assert "not found" in str(caught.value).lower()
    assert caught.value.retryable is False
    assert isinstance(caught.value.__cause__, gexc.NotFound)


def test_attributes_must_be_strings_and_not_shadow_publisher_parameters(
    bus: PubSubBus,
) -> None:
    with pytest.raises(BackendError, match="must be strings"):
        bus.publish("tasks", _completion("x"), attributes={"attempt": 1})  # type: ignore[dict-item]
    with pytest.raises(BackendError, match="clashes"):
        bus.publish("tasks", _completion("x"), attributes={"timeout": "5"})


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (gexc.ServiceUnavailable("down"), True),
        (gexc.DeadlineExceeded("slow"), True),
        (gexc.TooManyRequests("429"), True),
        (gexc.ResourceExhausted("quota"), True),
        (gexc.InternalServerError("500"), True),
        (gexc.PermissionDenied("no"), False),
        (gexc.InvalidArgument("bad"), False),
    ],
    ids=["unavailable", "deadline", "429", "exhausted", "500", "denied", "invalid"],
)
def test_api_errors_become_backend_errors_retryable_only_when_transient(
    error: Exception, retryable: bool
) -> None:
    with pytest.raises(BackendError) as caught, _translated("publishing to t"):
        raise error

    assert caught.value.retryable is retryable
    assert str(caught.value).startswith("publishing to t: ")
    assert caught.value.__cause__ is error
