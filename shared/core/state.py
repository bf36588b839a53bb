"""The run's state machine, as pure functions over stored records.

The run engine (`shared.core.run_engine`) reads records, asks these functions what is due,
and applies the answer through the store's compare-and-set writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from shared.messages import (
    RELEASE_PHASES,
    Phase,
    RunRecord,
    RunResult,
    RunStatus,
    ServiceError,
    ServiceResult,
    TaskRecord,
    TaskStatus,
)

# Released and not ended: what counts against a cap.
IN_FLIGHT = frozenset({TaskStatus.PENDING, TaskStatus.RUNNING})


def in_flight(counts: Mapping[TaskStatus, int]) -> int:
    """How many of the tasks `counts` (`RunStore.count_tasks`) counts are in flight."""
    return sum(n for status, n in counts.items() if status in IN_FLIGHT)


def all_terminal(counts: Mapping[TaskStatus, int]) -> bool:
    return all(status.terminal for status, n in counts.items() if n)


def all_succeeded(counts: Mapping[TaskStatus, int]) -> bool:
    return all(status is TaskStatus.SUCCEEDED for status, n in counts.items() if n)


@dataclass(frozen=True)
class DeployStep:
    """What is due in the deploy phase after the latest completion."""

    release: list[TaskRecord]
    skip: list[tuple[TaskRecord, str]]
    finished: bool


def next_deploys(tasks: Sequence[TaskRecord]) -> DeployStep:
    """Waiting deploys whose dependencies all succeeded are released; those downstream of
    a failure are skipped, naming it (transitively: a skip skips its own dependents); the
    phase is finished when nothing is left open."""
    status = {t.service: t.status for t in tasks}
    reasons: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for task in tasks:
            if status[task.service] is not TaskStatus.WAITING:
                continue
            failed = [
                d
                for d in task.depends_on
                if d in status and status[d].terminal and status[d] is not TaskStatus.SUCCEEDED
            ]
            if failed:
                status[task.service] = TaskStatus.SKIPPED
                reasons[task.service] = (
                    f"not deployed: dependency {', '.join(failed)} did not deploy"
                )
                changed = True
    release = [
        t
        for t in tasks
        if status[t.service] is TaskStatus.WAITING
        and all(status.get(d, TaskStatus.SUCCEEDED) is TaskStatus.SUCCEEDED for d in t.depends_on)
    ]
    skip = [(t, reasons[t.service]) for t in tasks if t.service in reasons]
    finished = not release and all(s.terminal for s in status.values())
    return DeployStep(release=release, skip=skip, finished=finished)


def outcome(tasks: Iterable[TaskRecord]) -> RunStatus:
    """How the run went; rollback tasks say what was undone, not how the run went."""
    statuses = [t.status for t in tasks if t.phase is not Phase.ROLLBACK and not _unused(t)]
    if any(s is TaskStatus.CANCELLED for s in statuses):
        return RunStatus.CANCELLED
    if all(s is TaskStatus.SUCCEEDED for s in statuses):
        return RunStatus.SUCCEEDED
    return RunStatus.FAILED


def _unused(task: TaskRecord) -> bool:
    """A release's revert that was never needed: the release went through."""
    return task.phase is Phase.REVERT and task.status is TaskStatus.WAITING


def assemble_result(
    run: RunRecord, tasks: Sequence[TaskRecord], status: RunStatus | None = None
) -> RunResult:
    """The run's result view: one entry per service, every image, URL and error."""
    services: dict[str, ServiceResult] = {}
    errors: list[ServiceError] = []
    for task in sorted(tasks, key=_phase_order):
        if task.phase is Phase.ROLLBACK:
            continue
        entry = services.get(task.service)
        if entry is None:  # not `setdefault`: it would build an entry per task, not service
            entry = services[task.service] = ServiceResult(
                service=task.service, dataflow=task.dataflow, status=""
            )
        if task.phase in RELEASE_PHASES:
            _merge_release(entry, task)
        else:
            _merge(entry, task)
        if task.error and task.status is not TaskStatus.SUCCEEDED:
            errors.append(ServiceError(service=task.service, phase=task.phase, error=task.error))
    for task in tasks:
        if task.phase is Phase.ROLLBACK and task.service in services:
            entry = services[task.service]
            entry.rolled_back = task.status is TaskStatus.SUCCEEDED
            if task.error and task.status in (TaskStatus.FAILED, TaskStatus.TIMED_OUT):
                errors.append(
                    ServiceError(service=task.service, phase=task.phase, error=task.error)
                )
    for entry in services.values():
        entry.status = _service_status(entry, run)
    finished = run.finished_at
    return RunResult(
        run_id=run.run_id,
        status=status or run.status,
        phase=run.phase,
        project_id=run.project_id,
        director_url=run.director_url,
        dataflows=run.dataflows,
        error=run.error,
        created_at=run.created_at,
        finished_at=finished,
        duration_seconds=round((finished - run.created_at).total_seconds(), 3)
        if finished
        else None,
        services=services,
        images={name: s.image for name, s in services.items() if s.image},
        urls={name: s.url for name, s in services.items() if s.url},
        errors=errors,
        rolled_back=sorted(name for name, s in services.items() if s.rolled_back),
    )


def _phase_order(task: TaskRecord) -> tuple[int, str]:
    return (_PHASE_RANK[task.phase], task.service)


# Each phase's place in `Phase`'s order: `list(Phase).index` per task cost a fifth of
# assembling a 1,000-service result, which is on the run's last step.
_PHASE_RANK = {phase: place for place, phase in enumerate(Phase)}


def _merge_release(entry: ServiceResult, task: TaskRecord) -> None:
    """A release task's part: staged revision and tag URL, checks, traffic, revert."""
    detail = task.release
    if task.phase is Phase.STAGE:
        _merge(entry, task)
        if detail is not None:
            entry.staged_revision, entry.tag_url = detail.revision, detail.tag_url
    elif task.phase is Phase.REVERT:
        entry.rolled_back = task.status is TaskStatus.SUCCEEDED and not task.reused
        entry.url = entry.url or task.url  # a rollback run has no stage: the URL put back
    elif detail is not None:
        entry.checks = [*entry.checks, *(c for c in detail.checks if c not in entry.checks)]
        if task.phase is Phase.PROMOTE:
            entry.promoted_percent = detail.percent
    # A phase skipped after a failure keeps the failure as the service's error, not its echo.
    skipped = task.status is TaskStatus.SKIPPED and entry.error is not None
    if task.error and task.status is not TaskStatus.SUCCEEDED and not skipped:
        entry.error = task.error
    if task.status in (TaskStatus.PENDING, TaskStatus.RUNNING):
        entry.release_step = _RELEASE_STEPS[task.phase]


_RELEASE_STEPS = {
    Phase.STAGE: "staging",
    Phase.VERIFY: "verifying",
    Phase.PROMOTE: "promoting",
    Phase.REVERT: "reverting",
}


def _merge(entry: ServiceResult, task: TaskRecord) -> None:
    if task.phase is Phase.BUILD:
        entry.build_status = task.status
        entry.build_seconds = task.duration_seconds
        entry.image = task.image
        entry.image_reused = task.reused
    else:
        entry.deploy_status = task.status
        entry.deploy_seconds = task.duration_seconds
        entry.url = task.url
        entry.unchanged = task.reused and task.status is TaskStatus.SUCCEEDED
        if task.dataflow is not None:
            entry.dataflow = task.dataflow
    if task.error and task.status is not TaskStatus.SUCCEEDED:
        entry.error = task.error


_BUILD_LABELS = {
    TaskStatus.PENDING: "queued",
    TaskStatus.RUNNING: "building",
    TaskStatus.SUCCEEDED: "built",
}
_DEPLOY_LABELS = {
    TaskStatus.WAITING: "built",
    TaskStatus.PENDING: "queued",
    TaskStatus.RUNNING: "deploying",
    TaskStatus.SUCCEEDED: "deployed",
}


def _service_status(entry: ServiceResult, run: RunRecord) -> str:
    """One word a person can read: where this service got to."""
    build, deploy = entry.build_status, entry.deploy_status
    if build is not None and build is not TaskStatus.SUCCEEDED:
        return _BUILD_LABELS.get(build, build.value)
    if deploy is None:
        if entry.rolled_back or entry.release_step:  # a rollback run: reverts only
            return entry.release_step or "rolled back"
        if entry.error:
            return "failed"
        return "built" if build is TaskStatus.SUCCEEDED else "planned"
    if deploy is TaskStatus.WAITING and run.status.terminal:
        return "not deployed"
    if entry.release_step:
        return entry.release_step
    if entry.rolled_back:
        return "rolled back"
    if entry.staged_revision:
        return "promoted" if entry.promoted_percent == 100 else "staged"
    if entry.unchanged:
        return "unchanged"
    return _DEPLOY_LABELS.get(deploy, deploy.value)
