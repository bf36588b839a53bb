"""Runs that need a hand, driven through fakes: cancellation, the deadline sweep, failing a
task, supersede, admission caps, dead letters and poison messages, and cancelling
submitted builds when one fails."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.architecture.model import Architecture, DeploymentSpec
from shared.core.aggregator import record_completion
from shared.core.control import cancel_run, fail_task, sweep
from shared.core.dispatcher import dispatch_request
from shared.core.handlers import on_completion, on_dead_letter, on_task, subscribe_all
from shared.core.run_engine import advance_run
from shared.core.runtime import Driver, RunPolicy, Runtime
from shared.core.worker import report
from shared.deployer import Target
from shared.messages import (
    TOPIC_COMPLETIONS,
    TOPIC_RESULTS,
    TOPIC_TASKS,
    DeployRequest,
    Phase,
    RunResult,
    RunStatus,
    TaskCompletion,
    TaskRecord,
    TaskStatus,
    task_id_for,
)
from tests.builders import architecture, wide
from tests.fakes import FakeBus, FakeDeployer, FakeRunStore

BUILD_LEASE = 1800.0
BUILD_DEADLINE = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class SubmittingDeployer(FakeDeployer):
    """Submits builds as Cloud Build does; their outcome comes later, as a build event."""

    def __init__(self, cancel: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.cancel = cancel

    def submit_build(
        self, service_name: str, spec: DeploymentSpec, *, target: Target | None = None
    ) -> str:
        return f"build-{service_name}"

    def cancel_build(self, build_id: str) -> None:
        if self.cancel is not None:
            self.cancel(build_id)


class System:
    def __init__(
        self, deployer: FakeDeployer | None = None, driver: Driver | None = None, **policy: Any
    ) -> None:
        self.store = FakeRunStore()
        self.bus = FakeBus()
        self.deployer = deployer or FakeDeployer()
        self.clock = Clock()
        self.rt = Runtime(
            store=self.store,
            bus=self.bus,
            deployer=self.deployer,
            clock=self.clock,
            policy=RunPolicy(**policy),
            driver=driver,
        )
        subscribe_all(self.bus, self.rt)

    def dispatch(self, arch: Architecture | None = None, **request: Any) -> str:
        arch = arch or architecture()
        run = dispatch_request(
            DeployRequest(architecture=arch.model_dump_json(), **request), self.rt
        )
        return run.run_id

    def deliver(self, keep: Callable[[str, Mapping[str, str]], bool] = lambda t, a: True) -> None:
        """Deliver everything queued, losing the messages `keep` refuses."""
        while self.bus.queue:
            topic, data, attributes = self.bus.queue.popleft()
            if keep(topic, attributes):
                for subscriber in self.bus.subscribers.get(topic, []):
                    subscriber(data, attributes)

    def statuses(self, run_id: str, phase: Phase) -> dict[str, TaskStatus]:
        return {t.service: t.status for t in self.store.get_tasks(run_id, phase)}

    def task(self, run_id: str, phase: Phase, service_name: str) -> TaskRecord:
        task = self.store.get_task(task_id_for(run_id, phase, service_name))
        assert task is not None
        return task

    def lose(self, task_id: str) -> None:
        """The task's queued messages never arrive."""
        self.bus.queue = deque(m for m in self.bus.queue if m[2].get("task_id") != task_id)

    def claim(self, run_id: str, phase: Phase, service_name: str) -> TaskRecord:
        """A worker claims the task (and, say, dies): its message is gone from the queue."""
        task_id = task_id_for(run_id, phase, service_name)
        self.lose(task_id)
        claimed = self.store.claim_task(
            task_id, worker="w-1", lease_seconds=self.rt.policy.leases[phase], now=self.clock()
        )
        assert claimed is not None
        return claimed

    def result(self, run_id: str) -> RunResult:
        result = self.store.get_result(run_id)
        assert result is not None, f"the run has not finished: {self.store.get_tasks(run_id)}"
        return result


def _finished_events(system: System, run_id: str) -> int:
    return sum(
        1
        for topic, _, a in system.bus.published
        if topic == TOPIC_RESULTS and a["run_id"] == run_id
    )


def _completion(task: TaskRecord, status: TaskStatus, **outputs: Any) -> TaskCompletion:
    return TaskCompletion(
        run_id=task.run_id,
        task_id=task.task_id,
        phase=task.phase,
        service=task.service,
        status=status,
        attempt=task.attempt,
        **outputs,
    )


# --- cancel_run ---------------------------------------------------------------------------


def test_cancelling_stops_what_has_not_started_and_ends_the_run_once_what_runs_has_ended() -> None:
    system = System()
    run_id = system.dispatch()
    running = system.claim(run_id, Phase.BUILD, "ingest")

    run = cancel_run(run_id, system.rt, by="alice")

    assert run is not None and run.cancelled_by == "alice" and not run.status.terminal
    builds = system.statuses(run_id, Phase.BUILD)
    assert builds.pop("ingest") is TaskStatus.RUNNING
    assert set(builds.values()) == {TaskStatus.CANCELLED}
    assert set(system.statuses(run_id, Phase.DEPLOY).values()) == {TaskStatus.CANCELLED}
    # The build in flight ends; the run ends cancelled, keeping what it built.
    record_completion(_completion(running, TaskStatus.SUCCEEDED, image="img@sha256:1"), system.rt)
    system.deliver()
    result = system.result(run_id)
    assert result.status is RunStatus.CANCELLED
    assert result.images == {"ingest": "img@sha256:1"}
    assert system.deployer.built == [] and system.deployer.deploys == []
    assert _finished_events(system, run_id) == 1


def test_cancelling_twice_records_the_first_canceller_and_one_result() -> None:
    system = System()
    run_id = system.dispatch()
    cancel_run(run_id, system.rt, by="alice")
    again = cancel_run(run_id, system.rt, by="bob")
    assert again is not None and again.cancelled_by == "alice"
    assert system.result(run_id).status is RunStatus.CANCELLED
    assert system.store.finish_calls >= 1 and _finished_events(system, run_id) == 1


def test_cancelling_a_finished_or_unknown_run_changes_nothing() -> None:
    system = System()
    run_id = system.dispatch()
    system.deliver()
    before = system.result(run_id)
    finished = cancel_run(run_id, system.rt, by="alice")
    assert finished is not None and finished.status is RunStatus.SUCCEEDED
    assert finished.cancelled_by is None
    assert system.result(run_id) == before
    assert cancel_run("r-unknown", system.rt, by="alice") is None


# --- the sweep ----------------------------------------------------------------------------


def test_the_sweep_times_out_a_task_past_its_phase_deadline_and_the_run_fails() -> None:
    system = System()
    run_id = system.dispatch(wide(2))
    system.claim(run_id, Phase.BUILD, "svc-0000")  # its worker hangs
    system.deliver()
    system.clock.advance(BUILD_DEADLINE + 1)

    report = sweep(system.rt)

    assert report.timed_out == [task_id_for(run_id, Phase.BUILD, "svc-0000")]
    result = system.result(run_id)
    assert result.status is RunStatus.FAILED
    (error,) = result.errors
    assert error.service == "svc-0000" and "build deadline of 3600s" in error.error
    assert system.deployer.deploys == []


def test_the_sweep_resends_a_task_nobody_claimed_only_after_republish_after() -> None:
    system = System(republish_after=120.0)
    run_id = system.dispatch(wide(2))
    system.bus.queue.clear()  # the task messages are lost

    system.clock.advance(60)
    assert sweep(system.rt).republished == []
    system.clock.advance(61)
    assert len(sweep(system.rt).republished) == 2

    system.deliver()
    assert system.result(run_id).status is RunStatus.SUCCEEDED
    assert sorted(n for n, _ in system.deployer.built) == ["svc-0000", "svc-0001"]


def test_a_crashed_workers_task_is_resent_when_its_lease_runs_out_and_done_on_attempt_two() -> None:
    system = System()
    run_id = system.dispatch(wide(2))
    system.claim(run_id, Phase.BUILD, "svc-0000")  # the worker dies before building
    system.deliver()

    system.clock.advance(BUILD_LEASE - 1)
    assert sweep(system.rt).republished == []  # the lease still holds
    system.clock.advance(2)
    assert sweep(system.rt).republished == [task_id_for(run_id, Phase.BUILD, "svc-0000")]
    system.deliver()

    assert system.result(run_id).status is RunStatus.SUCCEEDED
    assert system.task(run_id, Phase.BUILD, "svc-0000").attempt == 2
    assert sorted(n for n, _ in system.deployer.built) == ["svc-0000", "svc-0001"]


def test_a_submitted_build_is_not_resent_when_its_lease_runs_out() -> None:
    system = System()
    run_id = system.dispatch(wide(1))
    claimed = system.claim(run_id, Phase.BUILD, "svc-0000")
    system.store.record_build_id(claimed.task_id, "build-1")
    system.clock.advance(BUILD_LEASE + 1)
    assert sweep(system.rt).republished == []
    assert system.task(run_id, Phase.BUILD, "svc-0000").status is TaskStatus.RUNNING


def test_the_run_deadline_times_out_every_open_task_and_cancels_submitted_builds() -> None:
    cancelled: list[str] = []
    system = System(SubmittingDeployer(cancelled.append), run_deadline=7200.0)
    run_id = system.dispatch(wide(2))
    claimed = system.claim(run_id, Phase.BUILD, "svc-0000")
    system.store.record_build_id(claimed.task_id, "build-1")
    system.bus.queue.clear()
    system.clock.advance(7201)

    report = sweep(system.rt)

    assert len(report.timed_out) == 4  # two builds, two deploys
    assert cancelled == ["build-1"]
    result = system.result(run_id)
    assert result.status is RunStatus.FAILED
    assert all("run's deadline of 7200s" in e.error for e in result.errors)


def test_the_sweep_moves_a_run_on_when_its_completions_are_lost() -> None:
    system = System()
    run_id = system.dispatch()
    for _ in range(4):  # builds, director, two deploy steps (ingest, then enrich)
        system.deliver(keep=lambda topic, _: topic != TOPIC_COMPLETIONS)
        sweep(system.rt)
    system.deliver(keep=lambda topic, _: topic != TOPIC_COMPLETIONS)
    sweep(system.rt)
    assert system.result(run_id).status is RunStatus.SUCCEEDED
    assert len(system.deployer.deploys) == 4


def test_sweeping_when_nothing_is_due_changes_nothing() -> None:
    system = System()
    run_id = system.dispatch()
    report = sweep(system.rt)
    assert (report.runs, report.timed_out, report.republished) == (1, [], [])
    system.deliver()
    result = system.result(run_id)
    tasks = dict(system.store.tasks)
    assert sweep(system.rt).runs == 0
    assert system.store.tasks == tasks and system.result(run_id) == result
    assert _finished_events(system, run_id) == 1


# --- fail_task, poison and dead letters ---------------------------------------------------


def test_failing_a_build_task_fails_the_run_and_starts_no_queued_build() -> None:
    system = System(build_concurrency=1)
    run_id = system.dispatch(wide(3))
    first = task_id_for(run_id, Phase.BUILD, "svc-0000")

    fail_task(run_id, first, "its message could not be read", system.rt)
    system.deliver()

    result = system.result(run_id)
    assert result.status is RunStatus.FAILED
    assert system.deployer.built == [] and system.deployer.deploys == []
    errors = {e.service: e.error for e in result.errors}
    assert errors["svc-0000"] == "its message could not be read"
    assert errors["svc-0001"] == "not started: build of svc-0000 failed"


def test_failing_an_unknown_task_or_another_runs_task_changes_nothing() -> None:
    system = System()
    run_id = system.dispatch(wide(1))
    other_id = system.dispatch(wide(1), idempotency_key="other")
    before = dict(system.store.tasks)
    fail_task(run_id, f"{run_id}:build:ghost", "boom", system.rt)
    fail_task(run_id, task_id_for(other_id, Phase.BUILD, "svc-0000"), "boom", system.rt)
    assert system.store.tasks == before


def test_a_poison_task_message_with_ids_fails_its_task_and_the_run() -> None:
    system = System()
    run_id = system.dispatch(wide(2))
    task_id = task_id_for(run_id, Phase.BUILD, "svc-0000")
    system.lose(task_id)

    on_task(b"{not json", {"run_id": run_id, "task_id": task_id}, system.rt, "m-1")
    system.deliver()

    task = system.task(run_id, Phase.BUILD, "svc-0000")
    assert task.status is TaskStatus.FAILED
    assert task.error and "message m-1 is not a valid TaskMessage" in task.error
    assert system.result(run_id).status is RunStatus.FAILED
    assert system.deployer.deploys == []


def test_a_poison_task_message_without_ids_is_dropped_and_the_sweep_resends_its_task() -> None:
    system = System(republish_after=120.0)
    run_id = system.dispatch(wide(1))
    system.bus.queue.clear()
    on_task(b"\xff\xfe", {}, system.rt, "m-1")
    system.clock.advance(121)
    sweep(system.rt)
    system.deliver()
    assert system.result(run_id).status is RunStatus.SUCCEEDED


def test_a_poison_completion_with_a_run_id_moves_the_run_on_from_the_store() -> None:
    system = System()
    run_id = system.dispatch(wide(1))
    system.deliver(keep=lambda topic, _: topic == TOPIC_TASKS)  # the build's completion is lost
    on_completion(b'{"run_id": 1}', {"run_id": run_id}, system.rt, "m-2")
    system.deliver()
    assert system.result(run_id).status is RunStatus.SUCCEEDED


def test_a_dead_lettered_task_message_fails_its_task() -> None:
    system = System()
    run_id = system.dispatch(wide(1))
    task_id = task_id_for(run_id, Phase.BUILD, "svc-0000")
    (message,) = [m for m in system.bus.queue if m[0] == TOPIC_TASKS]
    system.bus.queue.clear()

    on_dead_letter(message[1], message[2], system.rt, "m-3")

    task = system.task(run_id, Phase.BUILD, "svc-0000")
    assert task.task_id == task_id and task.status is TaskStatus.FAILED
    assert task.error == "its message was dead-lettered after repeated failures"
    assert system.result(run_id).status is RunStatus.FAILED


def test_a_dead_lettered_completion_moves_its_run_on_and_fails_nothing() -> None:
    system = System()
    run_id = system.dispatch(wide(1))
    system.deliver(keep=lambda topic, _: topic == TOPIC_TASKS)
    (completion,) = [p for p in system.bus.published if p[0] == TOPIC_COMPLETIONS]
    on_dead_letter(completion[1], completion[2], system.rt, "m-4")
    system.deliver()
    assert system.result(run_id).status is RunStatus.SUCCEEDED


def test_a_dead_letter_without_ids_changes_nothing() -> None:
    system = System()
    run_id = system.dispatch(wide(1))
    before = dict(system.store.tasks)
    on_dead_letter(b"{}", {}, system.rt, "m-5")
    assert system.store.tasks == before and system.store.get_result(run_id) is None


# --- supersede ----------------------------------------------------------------------------


def test_a_newer_request_for_the_same_target_cancels_the_older_run() -> None:
    system = System()
    older = system.dispatch(supersede_key="acme/app@main", idempotency_key="push-1")
    elsewhere = system.dispatch(supersede_key="acme/app@dev", idempotency_key="push-2")
    system.clock.advance(1)

    newer = system.dispatch(supersede_key="acme/app@main", idempotency_key="push-3")
    system.deliver()

    assert system.result(older).status is RunStatus.CANCELLED
    assert system.store.runs[older].cancelled_by == f"superseded by {newer}"
    assert system.result(newer).status is RunStatus.SUCCEEDED
    assert system.result(elsewhere).status is RunStatus.SUCCEEDED


def test_a_newer_request_leaves_an_older_finished_run_alone() -> None:
    system = System()
    older = system.dispatch(supersede_key="acme/app@main", idempotency_key="push-1")
    system.deliver()
    system.clock.advance(1)
    system.dispatch(supersede_key="acme/app@main", idempotency_key="push-2")
    system.deliver()
    assert system.result(older).status is RunStatus.SUCCEEDED
    assert system.store.runs[older].cancelled_by is None


# --- admission caps -----------------------------------------------------------------------


def _in_flight(system: System, run_id: str, phase: Phase) -> int:
    busy = (TaskStatus.PENDING, TaskStatus.RUNNING)
    return sum(s in busy for s in system.statuses(run_id, phase).values())


@pytest.mark.parametrize("phase", [Phase.BUILD, Phase.DEPLOY], ids=["builds", "deploys"])
def test_a_cap_keeps_that_many_tasks_in_flight_and_releases_the_rest_as_they_end(
    phase: Phase,
) -> None:
    system = System(build_concurrency=2) if phase is Phase.BUILD else System(deploy_concurrency=2)
    run_id = system.dispatch(wide(5))
    most = 0
    while system.bus.queue:
        topic, data, attributes = system.bus.queue.popleft()
        for subscriber in system.bus.subscribers.get(topic, []):
            subscriber(data, attributes)
        most = max(most, _in_flight(system, run_id, phase))
    assert most == 2
    assert system.result(run_id).status is RunStatus.SUCCEEDED
    assert len(system.deployer.deploys) == 5


class RacingStore(FakeRunStore):
    """Runs `race` (another aggregator) just before the next read of tasks after a count."""

    race: Callable[[], None] | None = None
    _counting = False

    def count_tasks(self, run_id: str, phase: Phase) -> dict[TaskStatus, int]:
        self._counting = True
        try:
            return super().count_tasks(run_id, phase)
        finally:
            self._counting = False

    def get_tasks(self, run_id: str, phase: Phase | None = None) -> list[TaskRecord]:
        if not self._counting and self.race is not None:
            race, self.race = self.race, None
            race()
        return super().get_tasks(run_id, phase)

    def waiting_tasks(self, run_id: str, phase: Phase, limit: int) -> list[TaskRecord]:
        if self.race is not None:
            race, self.race = self.race, None
            race()
        return super().waiting_tasks(run_id, phase, limit)


def test_a_build_cap_holds_when_another_aggregator_admits_between_count_and_fetch() -> None:
    system = System(build_concurrency=2)
    system.store = store = RacingStore()
    system.rt.store = store
    run_id = system.dispatch(wide(5))
    for task in store.get_tasks(run_id, Phase.BUILD):
        if task.status is TaskStatus.PENDING:  # the first two builds end
            store.complete_task(_completion(task, TaskStatus.SUCCEEDED, image=f"i-{task.service}"))

    # This aggregator counts 0 in flight; before it reads the waiting builds, another
    # aggregator (on the other build's completion) admits two.
    store.race = lambda: advance_run(run_id, system.rt)
    advance_run(run_id, system.rt)

    assert _in_flight(system, run_id, Phase.BUILD) == 2


def test_caps_are_per_run_so_two_runs_may_each_have_that_many_in_flight() -> None:
    system = System(build_concurrency=1)
    first = system.dispatch(wide(2), idempotency_key="a")
    second = system.dispatch(wide(2), idempotency_key="b")
    assert _in_flight(system, first, Phase.BUILD) == _in_flight(system, second, Phase.BUILD) == 1


# --- after a failed build -------------------------------------------------------------------


def _submitted(cancel_on_failure: bool, cancel_build: Callable[[str], None]) -> tuple[System, str]:
    """A run whose three builds were all submitted and are running."""
    system = System(
        SubmittingDeployer(cancel_build),
        async_builds=True,
        cancel_builds_on_failure=cancel_on_failure,
    )
    run_id = system.dispatch(wide(3))
    system.deliver()
    assert {t.build_id for t in system.store.get_tasks(run_id, Phase.BUILD)} == {
        "build-svc-0000",
        "build-svc-0001",
        "build-svc-0002",
    }
    return system, run_id


def _build_event(system: System, run_id: str, service_name: str, status: TaskStatus) -> None:
    task = system.task(run_id, Phase.BUILD, service_name)
    outputs = {"image": f"img-{service_name}"} if status is TaskStatus.SUCCEEDED else {"error": "x"}
    record_completion(_completion(task, status, build_id=task.build_id, **outputs), system.rt)


def test_a_failed_build_cancels_the_submitted_builds_still_running_when_configured() -> None:
    cancelled: list[str] = []
    system, run_id = _submitted(True, cancelled.append)
    _build_event(system, run_id, "svc-0000", TaskStatus.SUCCEEDED)

    _build_event(system, run_id, "svc-0001", TaskStatus.FAILED)

    assert cancelled == ["build-svc-0002"]  # not the one that ended, nor the one that failed
    _build_event(system, run_id, "svc-0002", TaskStatus.FAILED)  # Cloud Build: CANCELLED
    assert system.result(run_id).status is RunStatus.FAILED
    assert system.deployer.deploys == []


def test_without_the_setting_running_builds_are_left_to_finish() -> None:
    cancelled: list[str] = []
    system, run_id = _submitted(False, cancelled.append)
    _build_event(system, run_id, "svc-0001", TaskStatus.FAILED)
    assert cancelled == []
    assert system.store.get_result(run_id) is None  # waits for the builds in flight


def test_a_cancel_build_that_raises_does_not_stop_the_run() -> None:
    def refuse(build_id: str) -> None:
        raise RuntimeError(f"cannot cancel {build_id}")

    system, run_id = _submitted(True, refuse)
    _build_event(system, run_id, "svc-0000", TaskStatus.FAILED)
    _build_event(system, run_id, "svc-0001", TaskStatus.SUCCEEDED)
    _build_event(system, run_id, "svc-0002", TaskStatus.SUCCEEDED)
    assert system.result(run_id).status is RunStatus.FAILED


def test_a_build_failed_by_its_poison_message_also_cancels_the_others_when_configured() -> None:
    cancelled: list[str] = []
    system, run_id = _submitted(True, cancelled.append)
    task_id = task_id_for(run_id, Phase.BUILD, "svc-0000")
    fail_task(run_id, task_id, "its message could not be read", system.rt)
    assert sorted(cancelled) == ["build-svc-0001", "build-svc-0002"]
    assert system.store.runs[run_id].halted == "build of svc-0000 failed"


def test_a_late_failure_of_a_build_that_succeeded_on_another_attempt_does_not_halt_the_run() -> (
    None
):
    # Given a build whose first worker outlived its lease while the retry succeeded
    system = System()
    run_id = system.dispatch(wide(1))
    system.deliver(keep=lambda topic, _: topic == TOPIC_TASKS)
    built = system.task(run_id, Phase.BUILD, "svc-0000")
    assert built.status is TaskStatus.SUCCEEDED
    # When the first attempt's failure arrives late
    stale = _completion(built, TaskStatus.FAILED, error="UNAVAILABLE: gave up")
    record_completion(stale.model_copy(update={"attempt": 1}), system.rt)
    system.deliver()
    # Then the run goes on and deploys
    assert system.store.runs[run_id].halted is None
    assert system.result(run_id).status is RunStatus.SUCCEEDED
    assert system.deployer.deployed_names() == ["svc-0000"]


# --- a worker that outlived its lease ------------------------------------------------------


def _reclaimed_after_lease(system: System, run_id: str) -> tuple[TaskRecord, TaskRecord]:
    """Attempt 1 claims the build and is still at work when its lease lapses: the sweep
    re-sends the task and attempt 2 claims it. Returns both claims."""
    first = system.claim(run_id, Phase.BUILD, "svc-0000")
    system.clock.advance(BUILD_LEASE + 1)
    assert sweep(system.rt).republished == [first.task_id]
    second = system.claim(run_id, Phase.BUILD, "svc-0000")
    assert (first.attempt, second.attempt) == (1, 2)
    return first, second


def test_a_late_success_of_an_attempt_past_its_lease_loses_to_the_attempt_that_holds_the_task() -> (
    None
):
    # Given a build claimed again after its first worker's lease lapsed
    system = System()
    run_id = system.dispatch(wide(1))
    first, second = _reclaimed_after_lease(system, run_id)
    # When the first attempt finishes first, while the second is still building
    report(_completion(first, TaskStatus.SUCCEEDED, image="img-attempt-1"), system.rt)
    system.deliver()
    # Then its outcome is not recorded: the task is still the second attempt's
    task = system.task(run_id, Phase.BUILD, "svc-0000")
    assert (task.status, task.attempt, task.image) == (TaskStatus.RUNNING, 2, None)
    # And the second attempt's image is the one deployed and reported
    report(_completion(second, TaskStatus.SUCCEEDED, image="img-attempt-2"), system.rt)
    system.deliver()
    assert system.result(run_id).images == {"svc-0000": "img-attempt-2"}
    assert [spec.image for _, _, spec in system.deployer.deploys] == ["img-attempt-2"]


def test_a_late_failure_of_an_attempt_past_its_lease_does_not_halt_the_attempt_in_flight() -> None:
    # Given a build claimed again after its first worker's lease lapsed
    system = System()
    run_id = system.dispatch(wide(1))
    first, second = _reclaimed_after_lease(system, run_id)
    # When the first attempt's failure arrives while the second is building
    report(_completion(first, TaskStatus.FAILED, error="UNAVAILABLE: gave up"), system.rt)
    system.deliver()
    # Then nothing is halted, and the second attempt's success carries the run on
    assert system.store.runs[run_id].halted is None
    report(_completion(second, TaskStatus.SUCCEEDED, image="img-attempt-2"), system.rt)
    system.deliver()
    assert system.result(run_id).status is RunStatus.SUCCEEDED


def test_a_build_event_for_a_build_the_task_no_longer_waits_on_is_not_recorded() -> None:
    # Given an async build submitted again by attempt 2 (attempt 1's lease lapsed)
    system = System(SubmittingDeployer(), async_builds=True)
    run_id = system.dispatch(wide(1))
    _, second = _reclaimed_after_lease(system, run_id)
    system.store.record_build_id(second.task_id, "build-2")
    # When the event of attempt 1's build arrives
    stale = _completion(second, TaskStatus.FAILED, build_id="build-1", error="cancelled")
    record_completion(stale.model_copy(update={"attempt": 1}), system.rt)
    # Then the task still waits on build-2, and build-2's event ends it
    assert system.task(run_id, Phase.BUILD, "svc-0000").status is TaskStatus.RUNNING
    assert system.store.runs[run_id].halted is None
    done = _completion(second, TaskStatus.SUCCEEDED, build_id="build-2", image="img-2")
    record_completion(done.model_copy(update={"attempt": 1}), system.rt)  # events carry no attempt
    system.deliver()
    assert system.result(run_id).images == {"svc-0000": "img-2"}


class _UnreachableSources:
    """A `SourceProvider` whose commit cannot be fetched (GitHub answered 404)."""

    def localize(self, spec: DeploymentSpec) -> DeploymentSpec:
        from shared.errors import BackendError

        raise BackendError("downloading acme/shop@main: GitHub answered 404")


def test_a_source_that_cannot_be_fetched_fails_its_build_instead_of_hanging() -> None:
    # Given a worker whose build sources cannot be fetched, caching on (the default)
    system = System()
    system.rt.sources = _UnreachableSources()
    # When the run goes
    run_id = system.dispatch(wide(1))
    system.deliver()
    # Then the build failed naming the cause, and the run ended: nothing left running
    task = system.task(run_id, Phase.BUILD, "svc-0000")
    assert task.status is TaskStatus.FAILED and "GitHub answered 404" in (task.error or "")
    assert system.result(run_id).status is RunStatus.FAILED
