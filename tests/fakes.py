"""In-memory fakes of every port, with per-instance state and scripted failures."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from shared import store_rules as rules
from shared.architecture.model import DeploymentSpec
from shared.core.release_plan import TAG_PATTERN
from shared.deployer import (
    Deployed,
    Staged,
    Target,
    Traffic,
    build_then_deploy,
    config_fingerprint,
    current_target,
)
from shared.errors import BackendError
from shared.messages import (
    Phase,
    RunRecord,
    RunResult,
    TaskCompletion,
    TaskRecord,
    TaskStatus,
)


class FakeRunStore:
    """`RunStore` in dictionaries under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.runs: dict[str, RunRecord] = {}
        self.tasks: dict[str, TaskRecord] = {}
        self.architectures: dict[str, str] = {}
        self.results: dict[str, RunResult] = {}
        self.finish_calls = 0
        self.durations: dict[str, dict[str, float]] = {}  # project -> phase:service -> s
        self.slots: dict[str, dict[str, datetime]] = {}  # project -> holder -> lease expiry

    def create_run(
        self, run: RunRecord, tasks: Sequence[TaskRecord], architecture: str
    ) -> tuple[RunRecord, bool]:
        with self._lock:
            if run.run_id in self.runs:
                return self.runs[run.run_id], False
            self.runs[run.run_id] = run
            self.architectures[run.run_id] = architecture
            self.tasks.update({t.task_id: t for t in tasks})
            return run, True

    def get_run(self, run_id: str) -> RunRecord | None:
        return self.runs.get(run_id)

    def list_runs(self, limit: int = 20) -> list[RunRecord]:
        return sorted(self.runs.values(), key=lambda r: r.created_at, reverse=True)[:limit]

    def list_active_runs(self, limit: int = 500) -> list[RunRecord]:
        active = [r for r in self.runs.values() if not r.status.terminal]
        return sorted(active, key=lambda r: r.created_at)[:limit]

    def get_architecture(self, run_id: str) -> str | None:
        return self.architectures.get(run_id)

    def get_task(self, task_id: str) -> TaskRecord | None:
        return self.tasks.get(task_id)

    def get_tasks(self, run_id: str, phase: Phase | None = None) -> list[TaskRecord]:
        with self._lock:
            return [
                t
                for t in self.tasks.values()
                if t.run_id == run_id and (phase is None or t.phase is phase)
            ]

    def waiting_tasks(self, run_id: str, phase: Phase, limit: int) -> list[TaskRecord]:
        waiting = [t for t in self.get_tasks(run_id, phase) if t.status is TaskStatus.WAITING]
        return sorted(waiting, key=lambda t: t.rank)[: max(limit, 0)]

    def count_tasks(self, run_id: str, phase: Phase) -> dict[TaskStatus, int]:
        counts: dict[TaskStatus, int] = {}
        for task in self.get_tasks(run_id, phase):
            counts[task.status] = counts.get(task.status, 0) + 1
        return counts

    def release_task(
        self, task_id: str, *, spec_updates: Mapping[str, Any] | None = None, now: datetime
    ) -> TaskRecord | None:
        return self._update(task_id, lambda t: rules.released(t, spec_updates, now))

    def release_tasks(
        self, releases: Sequence[tuple[str, Mapping[str, Any]]], *, now: datetime
    ) -> list[TaskRecord]:
        released = [self.release_task(tid, spec_updates=up, now=now) for tid, up in releases]
        return [won for won in released if won is not None]

    def claim_task(
        self, task_id: str, *, worker: str, lease_seconds: float, now: datetime
    ) -> TaskRecord | None:
        return self._update(task_id, lambda t: rules.claimed(t, worker, lease_seconds, now))

    def record_build_id(self, task_id: str, build_id: str) -> None:
        self._update(task_id, lambda t: rules.with_build_id(t, build_id))

    def complete_task(self, completion: TaskCompletion) -> TaskRecord | None:
        return self._update(completion.task_id, lambda t: rules.completed(t, completion))

    def update_run(
        self, run_id: str, *, expect: Mapping[str, Any], changes: Mapping[str, Any]
    ) -> RunRecord | None:
        with self._lock:
            run = self.runs.get(run_id)
            updated = rules.run_updated(run, expect, changes) if run else None
            if updated is not None:
                self.runs[run_id] = updated
            return updated

    def finish_run(self, run_id: str, result: RunResult) -> bool:
        with self._lock:
            self.finish_calls += 1
            run = self.runs.get(run_id)
            done = rules.run_finished(run, result) if run else None
            if done is None:
                return False
            self.runs[run_id] = done
            self.results[run_id] = result
            return True

    def get_result(self, run_id: str) -> RunResult | None:
        return self.results.get(run_id)

    def get_durations(self, project_id: str) -> dict[str, float]:
        with self._lock:
            return dict(self.durations.get(project_id, {}))

    def record_durations(self, project_id: str, samples: Mapping[str, float]) -> None:
        with self._lock:
            current = self.durations.get(project_id, {})
            self.durations[project_id] = rules.durations_updated(current, samples)

    def build_slots(
        self,
        project_id: str,
        *,
        release: Sequence[str],
        want: Sequence[str],
        cap: int,
        lease_seconds: float,
        now: datetime,
    ) -> tuple[list[str], int]:
        with self._lock:
            held, granted, freed = rules.slots_taken(
                self.slots.get(project_id, {}),
                release=release,
                want=want,
                cap=cap,
                lease_seconds=lease_seconds,
                now=now,
            )
            self.slots[project_id] = held
            return granted, freed

    def _update(
        self, task_id: str, change: Callable[[TaskRecord], TaskRecord | None]
    ) -> TaskRecord | None:
        with self._lock:
            task = self.tasks.get(task_id)
            updated = change(task) if task else None
            if updated is not None:
                self.tasks[task_id] = updated
            return updated


Subscriber = Callable[[bytes, Mapping[str, str]], None]


class FakeBus:
    """`MessageBus` that queues and delivers only when told, one message at a time, in
    order, optionally duplicated or shuffled: at-least-once delivery made deterministic."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict[str, str]]] = []
        self.queue: deque[tuple[str, bytes, dict[str, str]]] = deque()
        self.subscribers: dict[str, list[Subscriber]] = {}
        self.fail_publish: set[str] = set()

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        self.subscribers.setdefault(topic, []).append(subscriber)

    def publish(
        self, topic: str, message: BaseModel, *, attributes: Mapping[str, str] | None = None
    ) -> None:
        if topic in self.fail_publish:
            raise BackendError(f"publishing to {topic}: unavailable", retryable=True)
        item = (topic, message.model_dump_json().encode(), dict(attributes or {}))
        self.published.append(item)
        self.queue.append(item)

    def publish_many(
        self, topic: str, messages: Sequence[tuple[BaseModel, Mapping[str, str]]]
    ) -> None:
        for message, attributes in messages:
            self.publish(topic, message, attributes=attributes)

    def topic(self, name: str) -> list[bytes]:
        return [data for topic, data, _ in self.published if topic == name]

    def deliver_all(
        self, *, duplicate: bool = False, shuffle: random.Random | None = None, limit: int = 10_000
    ) -> int:
        """Deliver until the queue is empty; returns how many deliveries were made."""
        delivered = 0
        while self.queue and delivered < limit:
            if shuffle is not None:
                self.queue.rotate(-shuffle.randrange(len(self.queue)))
            topic, data, attributes = self.queue.popleft()
            for _ in range(2 if duplicate else 1):
                for subscriber in self.subscribers.get(topic, []):
                    subscriber(data, attributes)
                    delivered += 1
        return delivered


class FakeDeployer:
    """`ContainerDeployer`, `IncrementalDeployer` and `TrafficDeployer` that records calls
    and takes scripted delays and failures. It remembers, per instance, each image built
    from a source and each deploy as a revision, so repeated runs reuse what is unchanged
    and a rollback returns to a revision it served. Revisions, tags and traffic percents
    live in memory and are checked as Cloud Run checks them (percents sum to 100 over
    known revisions; tag syntax), and every traffic change is logged with its time."""

    def __init__(
        self,
        *,
        build_seconds: float = 0.0,
        deploy_seconds: float = 0.0,
        fail_build: Mapping[str, str] | None = None,
        fail_deploy: Mapping[str, str] | None = None,
        build_gate: threading.Barrier | None = None,
        fail_stage: Mapping[str, str] | None = None,
    ) -> None:
        self.build_seconds = build_seconds
        # Builds wait here until every party has started: all in flight at once, by event.
        self.build_gate = build_gate
        self.deploy_seconds = deploy_seconds
        self.fail_build = dict(fail_build or {})
        self.fail_deploy = dict(fail_deploy or {})
        self._lock = threading.Lock()
        self.built: list[tuple[str, DeploymentSpec]] = []
        self.deploys: list[tuple[str, str, DeploymentSpec]] = []
        self.torn_down: list[str] = []
        self.events: list[tuple[str, str, float]] = []  # (action, service, monotonic time)
        self.images: dict[tuple[str, str], str] = {}  # (service, source) -> image built
        self.revisions: dict[str, list[Deployed]] = {}  # service -> every deploy, in order
        self.serving: dict[str, Deployed] = {}  # service -> what serves it now
        self.rolled_back: list[tuple[str, str]] = []  # (service, revision)
        self.fail_stage = dict(fail_stage or {})
        self.percents: dict[str, dict[str, int]] = {}  # service -> revision -> percent
        self.tags: dict[str, dict[str, str]] = {}  # service -> tag -> revision
        self.traffic_log: list[tuple[str, dict[str, int], float]] = []  # (service, %, time)

    def build(
        self, service_name: str, spec: DeploymentSpec, *, target: Target | None = None
    ) -> str:
        self._event("build-start", service_name)
        time.sleep(self.build_seconds)
        if self.build_gate is not None:
            self.build_gate.wait(timeout=30)
        if service_name in self.fail_build:
            self._event("build-failed", service_name)
            raise BackendError(f"building {service_name}: {self.fail_build[service_name]}")
        digest = hashlib.sha256(f"{service_name}:{spec.source_path}".encode()).hexdigest()
        image = f"fake.registry/{service_name}@sha256:{digest}"
        with self._lock:
            self.built.append((service_name, spec))
            self.images[(service_name, spec.source_path)] = image
        self._event("build-end", service_name)
        return image

    def deploy_service(
        self,
        service_name: str,
        service_account_email: str,
        spec: DeploymentSpec,
        *,
        target: Target | None = None,
    ) -> str:
        self._event("deploy-start", service_name)
        time.sleep(self.deploy_seconds)
        if service_name in self.fail_deploy:
            self._event("deploy-failed", service_name)
            raise BackendError(f"deploying {service_name}: {self.fail_deploy[service_name]}")
        health = (target or current_target()).health_check
        with self._lock:
            self.deploys.append((service_name, service_account_email, spec))
            history = self.revisions.setdefault(service_name, [])
            revision = f"{service_name}-{len(history) + 1:05}"
            now = Deployed(
                url=f"https://{service_name}.fake.run",
                image=spec.image,
                fingerprint=config_fingerprint(service_account_email, spec, health),
                revision=revision,
            )
            history.append(now)
            self._serve(service_name, {revision: 100})
        self._event("deploy-end", service_name)
        return now.url

    def cached_image(
        self, service_name: str, spec: DeploymentSpec, *, target: Target | None = None
    ) -> str | None:
        with self._lock:
            return self.images.get((service_name, spec.source_path))

    def deployed(self, service_name: str, *, target: Target | None = None) -> Deployed | None:
        with self._lock:
            return self.serving.get(service_name)

    def rollback(self, service_name: str, revision: str, *, target: Target | None = None) -> str:
        with self._lock:
            found = [d for d in self.revisions.get(service_name, []) if d.revision == revision]
            if not found:
                raise BackendError(f"rolling back {service_name}: no revision {revision!r}")
            self._serve(service_name, {revision: 100})
            self.rolled_back.append((service_name, revision))
        self._event("rollback", service_name)
        return found[0].url

    def build_and_deploy(
        self,
        service_name: str,
        service_account_email: str,
        spec: DeploymentSpec,
        *,
        target: Target | None = None,
    ) -> str:
        return build_then_deploy(self, service_name, service_account_email, spec, target=target)

    def teardown(self, service_name: str, *, target: Target | None = None) -> None:
        with self._lock:
            self.torn_down.append(service_name)
            self.serving.pop(service_name, None)
            self.percents.pop(service_name, None)
            self.tags.pop(service_name, None)

    def deployed_names(self) -> list[str]:
        return [name for name, _, _ in self.deploys]

    def _event(self, action: str, service: str) -> None:
        with self._lock:
            self.events.append((action, service, time.monotonic()))

    # TrafficDeployer

    def stage(
        self,
        service_name: str,
        service_account_email: str,
        spec: DeploymentSpec,
        *,
        tag: str,
        target: Target | None = None,
    ) -> Staged:
        if not TAG_PATTERN.match(tag):
            raise BackendError(f"staging {service_name}: tag {tag!r} is not a valid tag")
        self._event("stage-start", service_name)
        time.sleep(self.deploy_seconds)
        if service_name in self.fail_stage:
            raise BackendError(f"staging {service_name}: {self.fail_stage[service_name]}")
        health = (target or current_target()).health_check
        fingerprint = config_fingerprint(service_account_email, spec, health)
        with self._lock:
            tagged = self.tags.get(service_name, {}).get(tag)
            same = [d for d in self.revisions.get(service_name, []) if d.revision == tagged]
            if same and same[0].fingerprint == fingerprint:  # staged before: the same one
                return self._staged(service_name, tag, tagged or "", created=False)
            history = self.revisions.setdefault(service_name, [])
            revision = f"{service_name}-{len(history) + 1:05}"
            history.append(Deployed(self._url(service_name), spec.image, fingerprint, revision))
            self.deploys.append((service_name, service_account_email, spec))
            self.tags.setdefault(service_name, {})[tag] = revision
            created = service_name not in self.percents
            if created:  # a service cannot exist serving nothing
                self._serve(service_name, {revision: 100})
        self._event("stage-end", service_name)
        return self._staged(service_name, tag, revision, created=created)

    def traffic(self, service_name: str, *, target: Target | None = None) -> Traffic | None:
        with self._lock:
            if service_name not in self.percents:
                return None
            tags = dict(self.tags.get(service_name, {}))
            return Traffic(
                url=self._url(service_name),
                percents=dict(self.percents[service_name]),
                tags=tags,
                tag_urls={t: self._tag_url(service_name, t) for t in tags},
            )

    def set_traffic(
        self, service_name: str, percents: dict[str, int], *, target: Target | None = None
    ) -> Traffic:
        known = {d.revision for d in self.revisions.get(service_name, [])}
        if service_name not in self.percents:
            raise BackendError(f"setting traffic of {service_name}: no such service")
        unknown = sorted(set(percents) - known)
        if unknown:
            raise BackendError(f"setting traffic of {service_name}: no revision {unknown[0]!r}")
        if sum(percents.values()) != 100 or any(not 0 <= p <= 100 for p in percents.values()):
            raise BackendError(f"setting traffic of {service_name}: {percents} does not sum to 100")
        with self._lock:
            self._serve(service_name, {r: p for r, p in percents.items() if p > 0})
        self._event("set-traffic", service_name)
        traffic = self.traffic(service_name)
        assert traffic is not None
        return traffic

    def untag(self, service_name: str, tag: str, *, target: Target | None = None) -> None:
        with self._lock:
            self.tags.get(service_name, {}).pop(tag, None)

    def _serve(self, service_name: str, percents: dict[str, int]) -> None:
        """Under the lock: traffic now, logged; `serving` is the largest share's revision."""
        self.percents[service_name] = dict(percents)
        self.traffic_log.append((service_name, dict(percents), time.monotonic()))
        history = {d.revision: d for d in self.revisions.get(service_name, [])}
        top = max(percents, key=lambda r: (percents[r], r))
        self.serving[service_name] = history[top]

    def _staged(self, service_name: str, tag: str, revision: str, *, created: bool) -> Staged:
        return Staged(revision, tag, self._tag_url(service_name, tag), created=created)

    @staticmethod
    def _url(service_name: str) -> str:
        return f"https://{service_name}.fake.run"

    @staticmethod
    def _tag_url(service_name: str, tag: str) -> str:
        return f"https://{tag}---{service_name}.fake.run"
