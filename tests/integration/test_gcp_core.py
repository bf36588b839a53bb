"""The whole core on Google Cloud's parts: Pub/Sub and Firestore emulators, and the real
Cloud Build / Cloud Run clients against the fake servers. Builds are asynchronous, as on
Google Cloud: the worker submits, Cloud Build's `cloud-builds` event completes the task."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from google.cloud import pubsub_v1

from shared.adapters.gcp import build_events
from shared.adapters.gcp.firestore_store import FirestoreRunStore
from shared.adapters.gcp.pubsub_bus import PubSubBus
from shared.core import handlers
from shared.core.dispatcher import dispatch_request
from shared.core.runtime import RunPolicy, Runtime
from shared.messages import DeployRequest, RunResult, RunStatus
from tests.fakes_google.cloudbuild_server import FakeCloudBuild, notification
from tests.fakes_google.cloudrun_server import FakeCloudRun
from tests.integration.emulators import Emulator

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
Handler = Callable[[bytes, Mapping[str, str], Runtime, str], object]


class Pump:
    """Streaming-pull subscriptions that feed the handlers, acking only on success, the
    way a push subscription feeds a function."""

    def __init__(self, project: str, bus: PubSubBus) -> None:
        self.subscriber = pubsub_v1.SubscriberClient()
        self.bus = bus
        self.project = project
        self.futures: list[Any] = []
        self.failures: list[BaseException] = []

    def route(self, topic: str, handler: Handler, rt: Runtime) -> None:
        path = self.bus.topic_path(topic).replace("/topics/", "/subscriptions/") + "-sub"
        self.subscriber.create_subscription(
            request={"name": path, "topic": self.bus.topic_path(topic), "ack_deadline_seconds": 60}
        )

        def callback(message: Any) -> None:
            try:
                handler(message.data, dict(message.attributes), rt, message.message_id)
            except Exception as exc:  # redelivered, like a push endpoint answering 500
                self.failures.append(exc)
                message.nack()
                return
            message.ack()

        # Shutting down waits for handlers in flight: they publish, and the bus closes next.
        pull = self.subscriber.subscribe(path, callback=callback, await_callbacks_on_shutdown=True)
        self.futures.append(pull)

    def close(self) -> None:
        for future in self.futures:
            future.cancel()
            future.result(timeout=10)
        self.subscriber.close()


@pytest.fixture
def cloud(
    pubsub_env: Emulator,
    firestore_client: Any,
    gcp_deployer: Any,
    fake_cloudbuild: FakeCloudBuild,
) -> Iterator[tuple[Runtime, Pump]]:
    suffix = uuid.uuid4().hex[:8]
    names = ("requests", "tasks", "completions", "results", "builds")
    bus = PubSubBus(pubsub_env.project, {n: f"ad-{n}-{suffix}" for n in names}, timeout=10)
    bus.ensure_topics()
    store = FirestoreRunStore(
        project_id=pubsub_env.project, collection=f"runs-{suffix}", client=firestore_client
    )
    rt = Runtime(store=store, bus=bus, deployer=gcp_deployer, policy=RunPolicy(async_builds=True))
    publisher = pubsub_v1.PublisherClient()

    def on_terminal(build: Any) -> None:
        data, attributes = notification(build)
        publisher.publish(bus.topic_path("builds"), data, **attributes).result(timeout=10)

    fake_cloudbuild.on_terminal = on_terminal
    pump = Pump(pubsub_env.project, bus)
    pump.route("tasks", handlers.on_task, rt)
    pump.route("completions", handlers.on_completion, rt)
    pump.route("builds", build_events.on_build_event, rt)
    yield rt, pump
    fake_cloudbuild.on_terminal = None  # builds still finishing publish nothing now
    pump.close()
    publisher.stop()
    bus.close()


def _wait(rt: Runtime, run_id: str, timeout: float = 60) -> RunResult:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = rt.store.get_result(run_id)
        if result is not None:
            return result
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish in {timeout}s: {rt.store.get_tasks(run_id)}")


def test_the_example_deploys_through_pubsub_firestore_cloud_build_and_cloud_run(
    cloud: tuple[Runtime, Pump], fake_cloudbuild: FakeCloudBuild, fake_cloudrun: FakeCloudRun
) -> None:
    rt, pump = cloud
    request = DeployRequest(
        architecture=(EXAMPLES / "architecture.yaml").read_text(),
        source_root=str(EXAMPLES),
        requested_by="test",
    )
    run = dispatch_request(request, rt)
    result = _wait(rt, run.run_id)

    assert result.status is RunStatus.SUCCEEDED, result.errors
    assert sorted(result.images) == ["director", "enrich", "ingest", "notify"]
    assert all("@sha256:" in image for image in result.images.values())
    assert all(url.startswith("https://") for url in result.urls.values())
    assert pump.failures == []
    # One build per service, submitted by the worker and completed by the build event.
    builds = fake_cloudbuild.calls("CreateBuild")
    assert len(builds) == 4
    assert {t.build_id for t in rt.store.get_tasks(run.run_id) if t.build_id}
    # The director deployed first; its URL reached every application service's env.
    created = fake_cloudrun.calls("CreateService")
    assert created[0].service_id == "director"
    env = {
        c.service_id: {e.name: e.value for e in c.service.template.containers[0].env}
        for c in created
    }
    for name in ("ingest", "enrich", "notify"):
        assert env[name]["SERVICE_DIRECTOR_URL"] == result.urls["director"]
        assert env[name]["PROJECT_ID"] == "archdeploy-demo"
    # and each of them may call it: Cloud Run requires roles/run.invoker of the caller
    director = "projects/archdeploy-demo/locations/europe-west1/services/director"
    assert fake_cloudrun.invokers(director) == {
        f"serviceAccount:{name}-sa@archdeploy-demo.iam.gserviceaccount.com"
        for name in ("ingest", "enrich", "notify")
    }
    image_by_service = {c.service_id: c.service.template.containers[0].image for c in created}
    assert image_by_service == result.images


def test_a_failed_cloud_build_fails_the_run_through_the_build_event_and_deploys_nothing(
    cloud: tuple[Runtime, Pump], fake_cloudbuild: FakeCloudBuild, fake_cloudrun: FakeCloudRun
) -> None:
    rt, _ = cloud
    fake_cloudbuild.behave("enrich", status="FAILURE", status_detail="step 0 exited 1")
    request = DeployRequest(
        architecture=(EXAMPLES / "architecture.yaml").read_text(), source_root=str(EXAMPLES)
    )
    run = dispatch_request(request, rt)
    result = _wait(rt, run.run_id)

    assert result.status is RunStatus.FAILED
    (error,) = result.errors
    assert error.service == "enrich"
    assert "FAILURE" in error.error and "step 0 exited 1" in error.error
    assert fake_cloudrun.calls("CreateService") == []
    assert sorted(result.images) == ["director", "ingest", "notify"]


def test_task_messages_stay_far_below_eventarcs_512_kb(cloud: tuple[Runtime, Pump]) -> None:
    rt, _ = cloud
    request = DeployRequest(
        architecture=(EXAMPLES / "architecture.yaml").read_text(), source_root=str(EXAMPLES)
    )
    run = dispatch_request(request, rt)
    _wait(rt, run.run_id)
    architecture = rt.store.get_architecture(run.run_id)
    assert architecture is not None and "dataflows" in architecture
    for task in rt.store.get_tasks(run.run_id):
        assert task.spec is not None
        # A task carries one service's spec; the architecture stays in the store.
        assert len(task.model_dump_json()) < 4_096
