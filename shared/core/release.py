"""A release run's phases after build and director: stage, verify, promote, or revert.

Each phase's tasks are released in their order (`depends_on`, see
`shared.core.release_plan`); a phase opens when the one before has ended with every task
succeeded. Services whose stage found nothing changed take no further part: their
verify and promote end at once as unchanged. Any failure before full promotion (a stage,
a check, a promote, a cancel) stops what has not started and opens revert: every
service staged is put back on the traffic that served before, dependents first. A
rollback run (`archdeploy rollback`) is a run of revert tasks only.
"""

from __future__ import annotations

import logging

from shared.core.publishing import release
from shared.core.run_engine import close_tasks, finish_run
from shared.core.runtime import Runtime
from shared.core.state import next_deploys
from shared.messages import (
    Phase,
    RunRecord,
    RunStatus,
    TaskCompletion,
    TaskRecord,
    TaskStatus,
)

log = logging.getLogger(__name__)

_NEXT = {Phase.STAGE: Phase.VERIFY, Phase.VERIFY: Phase.PROMOTE}


def step_release(run: RunRecord, rt: Runtime) -> None:
    """Release what is due in the run's release phase; open the next, or finish."""
    tasks = _step(run, rt)
    if tasks is None:
        return  # tasks are still in flight
    if run.phase is Phase.REVERT:
        finish_run(run, rt.store.get_tasks(run.run_id), rt)
        return
    failed = _failure(tasks) or (run.halted and f"stopped: {run.halted}")
    if failed:
        _open_revert(run, failed, rt)
    elif run.phase is Phase.PROMOTE:
        finish_run(run, rt.store.get_tasks(run.run_id), rt)
    else:
        _open(run, _NEXT[run.phase], rt)


def _step(run: RunRecord, rt: Runtime) -> list[TaskRecord] | None:
    """Release the phase's ready tasks (none once something failed); its tasks once all
    have ended, else None."""
    tasks = rt.store.get_tasks(run.run_id, run.phase)
    waiting = [t for t in tasks if t.status is TaskStatus.WAITING]
    if waiting:
        failed = None if run.phase is Phase.REVERT else _failure(tasks) or run.halted
        if failed:
            close_tasks(waiting, TaskStatus.SKIPPED, f"not started: {failed}", rt)
        else:
            release(run, next_deploys(tasks).release, rt)
        tasks = rt.store.get_tasks(run.run_id, run.phase)
    return tasks if all(t.status.terminal for t in tasks) else None


def _failure(tasks: list[TaskRecord]) -> str | None:
    """The first failed task of a phase, as the reason the release stops."""
    for task in tasks:
        if task.status.terminal and task.status not in (TaskStatus.SUCCEEDED, TaskStatus.SKIPPED):
            return f"{task.phase.value} of {task.service} {task.status.value}"
    return None


def _open(run: RunRecord, phase: Phase, rt: Runtime) -> None:
    moved = rt.store.update_run(
        run.run_id,
        expect={"phase": run.phase, "status": RunStatus.RUNNING},
        changes={"phase": phase, "updated_at": rt.clock()},
    )
    if moved is None:
        return  # another step opened it
    log.info("release: phase %s opens", phase.value)
    _end_unchanged(run.run_id, phase, rt)
    step_release(moved, rt)


def _open_revert(run: RunRecord, why: str, rt: Runtime) -> None:
    moved = rt.store.update_run(
        run.run_id,
        expect={"phase": run.phase, "status": RunStatus.RUNNING},
        changes={"phase": Phase.REVERT, "updated_at": rt.clock()},
    )
    if moved is None:
        return
    log.warning("release stopped (%s): reverting what was staged", why)
    # The phases that will not open now end, so a finished run has no task waiting: left
    # alone (unchanged) for services with nothing staged, skipped for the others.
    for phase in _NEXT.values():
        _end_unchanged(run.run_id, phase, rt)
    unopened = [
        t
        for t in rt.store.get_tasks(run.run_id)
        if t.phase in _NEXT.values() and t.status is TaskStatus.WAITING
    ]
    close_tasks(unopened, TaskStatus.SKIPPED, f"not started: {why}", rt)
    _end_unchanged(run.run_id, Phase.REVERT, rt)
    step_release(moved, rt)


def _end_unchanged(run_id: str, phase: Phase, rt: Runtime) -> None:
    """A service with nothing staged (unchanged, or never started) has nothing to verify,
    promote or revert: its task ends at once, marked `reused`."""
    staged = {
        t.service
        for t in rt.store.get_tasks(run_id, Phase.STAGE)
        if not t.reused and t.status not in _NEVER_STARTED
    }
    for task in rt.store.get_tasks(run_id, phase):
        if task.service not in staged and task.status is TaskStatus.WAITING:
            rt.store.complete_task(
                TaskCompletion(
                    run_id=run_id,
                    task_id=task.task_id,
                    phase=phase,
                    service=task.service,
                    status=TaskStatus.SUCCEEDED,
                    reused=True,
                    finished_at=rt.clock(),
                )
            )


_NEVER_STARTED = (TaskStatus.WAITING, TaskStatus.SKIPPED, TaskStatus.CANCELLED)
