"""What a run left behind and the invariants it must keep: `StoreProbe` watches the store,
`observe` gathers the records, events and side effects, `check` says what was broken.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from shared.messages import (
    TOPIC_RESULTS,
    Phase,
    RunFinished,
    RunRecord,
    RunResult,
    RunStatus,
    TaskRecord,
    TaskStatus,
)
from shared.ports import RunStore
from tests.faults.faulty_adapters import Effect, FakeClock, FaultyDeployer
from tests.faults.scenarios import Fault, Scenario

_FAILED = (TaskStatus.FAILED, TaskStatus.TIMED_OUT)


class StoreProbe:
    """Passes every call to the store it wraps; counts `finish_run` calls and wins per run.
    Claims go through the clock's `claiming`, so none falls in a jump. With `strict_halt`,
    checks that no build is released once a build of its run failed (queued builds are
    not started); only where no other aggregator can race the check. With `deploy_cap`,
    checks after every release that no run has more deploys in flight than the cap."""

    def __init__(
        self,
        store: Any,
        clock: FakeClock,
        *,
        strict_halt: bool = False,
        deploy_cap: int | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        self.strict_halt = strict_halt
        self.deploy_cap = deploy_cap
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

    def release_tasks(
        self, releases: Sequence[tuple[str, Mapping[str, Any]]], *, now: datetime
    ) -> list[TaskRecord]:
        released: list[TaskRecord] = self._store.release_tasks(releases, now=now)
        cap = self.deploy_cap
        for run_id in {t.run_id for t in released if t.phase is Phase.DEPLOY}:
            deploys = self._store.get_tasks(run_id, Phase.DEPLOY)
            busy = sum(t.status in (TaskStatus.PENDING, TaskStatus.RUNNING) for t in deploys)
            if cap is not None and busy > cap:
                self.violations.append((run_id, f"{busy} deploys in flight, deploy cap {cap}"))
        return released

    def finish_run(self, run_id: str, result: RunResult) -> bool:
        won = bool(self._store.finish_run(run_id, result))
        with self._lock:
            self.finish_calls[run_id] += 1
            self.finish_wins[run_id] += won
        return won

    def as_store(self) -> RunStore:
        return cast(RunStore, self)


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
