"""The run's state machine: advance a run, finish it (releasing tasks: `publishing`).

`advance_run` is the step. Every transition it makes is a compare-and-set in the store,
so concurrent aggregators (and the sweep) act once between them; calling it again when
nothing is due changes nothing. The dispatcher, the aggregator and the sweep all move a
run through here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from shared.core.admission import ready_deploys
from shared.core.deploy_slots import free_run_deploys, settle_deploy_slots, take_deploy_slots
from shared.core.priority import admission_order
from shared.core.publishing import release
from shared.core.quota import after_finish, runs_waiting_for_slots, take_build_slots
from shared.core.runtime import Runtime
from shared.core.state import (
    IN_FLIGHT,
    all_succeeded,
    all_terminal,
    assemble_result,
    in_flight,
    next_deploys,
    outcome,
)
from shared.deployer import BuildSubmitter
from shared.messages import (
    RELEASE_PHASES,
    TOPIC_RESULTS,
    Phase,
    RunFinished,
    RunRecord,
    RunStatus,
    TaskCompletion,
    TaskRecord,
    TaskStatus,
)

log = logging.getLogger(__name__)


def halt_run(run_id: str, why: str, rt: Runtime) -> RunRecord | None:
    """Mark the run so no new task starts; the first caller also cancels submitted builds
    if configured. Returns the halted run, or None if it was halted already."""
    halted = rt.store.update_run(run_id, expect={"halted": None}, changes={"halted": why})
    if halted is not None and rt.policy.cancel_builds_on_failure:
        cancel_submitted_builds(run_id, rt)
    return halted


def cancel_submitted_builds(run_id: str, rt: Runtime) -> None:
    builds = rt.deployer
    if not isinstance(builds, BuildSubmitter):
        return
    for task in rt.store.get_tasks(run_id, Phase.BUILD):
        if task.status is TaskStatus.RUNNING and task.build_id:
            try:
                builds.cancel_build(task.build_id)
                log.info("build %s of %s cancelled", task.build_id, task.service)
            except Exception:  # cancelling saves quota; failing to must not stop the run
                log.warning("could not cancel build %s", task.build_id, exc_info=True)


def advance_run(run_id: str, rt: Runtime) -> None:
    """Open the next phase, release ready tasks, or finish the run."""
    run = rt.store.get_run(run_id)
    if run is None or run.status.terminal:
        return
    if run.phase is Phase.BUILD:
        _after_builds(run, rt)
    elif run.phase is Phase.DIRECTOR:
        _after_director(run, rt)
    elif run.phase is Phase.DEPLOY:
        _step_deploys(run, rt)
    elif run.phase in RELEASE_PHASES:
        _step_release(run, rt)
    else:
        _after_rollback(run, rt)


def _after_builds(run: RunRecord, rt: Runtime) -> None:
    counts = rt.store.count_tasks(run.run_id, Phase.BUILD)
    if not run.halted and any(counts.get(s) for s in BUILD_FAILED):
        run = _halt_on_stored_failure(run, rt)
    admitting = bool(counts.get(TaskStatus.WAITING)) and not run.halted
    if counts.get(TaskStatus.WAITING):
        if run.halted:
            waiting = _with_status(rt, run.run_id, Phase.BUILD, TaskStatus.WAITING)
            close_tasks(waiting, TaskStatus.SKIPPED, f"not started: {run.halted}", rt)
        else:
            _admit(run, Phase.BUILD, counts, rt.policy.build_concurrency, rt)
        counts = rt.store.count_tasks(run.run_id, Phase.BUILD)
    if rt.policy.project_build_cap is not None and not admitting:
        _with_build_slots(run, rt.store.get_tasks(run.run_id, Phase.BUILD), [], rt)
    if not all_terminal(counts):
        return
    if not all_succeeded(counts) or run.halted:
        _finish(run, rt)
        return
    has_director = any(rt.store.count_tasks(run.run_id, Phase.DIRECTOR).values())
    next_phase = Phase.DIRECTOR if has_director else _deploy_phase(run)
    moved = rt.store.update_run(
        run.run_id,
        expect={"phase": Phase.BUILD, "status": RunStatus.RUNNING, "halted": None},
        changes={"phase": next_phase, "updated_at": rt.clock()},
    )
    if moved is None:
        return
    log.info("all builds succeeded: phase %s opens", next_phase.value)
    if has_director:
        release(moved, rt.store.get_tasks(run.run_id, Phase.DIRECTOR), rt)
    else:
        _open_deploys(moved, rt)


BUILD_FAILED = (TaskStatus.FAILED, TaskStatus.TIMED_OUT)


def _halt_on_stored_failure(run: RunRecord, rt: Runtime) -> RunRecord:
    """A build failed without its completion coming here (the sweep timed it out, a poison
    or dead-lettered message failed it, its completion was lost): halt all the same."""
    failed = [t for t in rt.store.get_tasks(run.run_id, Phase.BUILD) if t.status in BUILD_FAILED]
    if failed:
        how = "timed out" if failed[0].status is TaskStatus.TIMED_OUT else "failed"
        halt_run(run.run_id, f"build of {failed[0].service} {how}", rt)
    return rt.store.get_run(run.run_id) or run


def _admit(
    run: RunRecord, phase: Phase, counts: Mapping[TaskStatus, int], cap: int | None, rt: Runtime
) -> None:
    """Release waiting tasks while the run has fewer than `cap` of them in flight, longest
    remaining path first (`shared.core.priority`); builds of a project with a build cap
    only once they hold one of its slots (`shared.core.quota`)."""
    room = counts.get(TaskStatus.WAITING, 0) if cap is None else cap - in_flight(counts)
    project_capped = phase is Phase.BUILD and rt.policy.project_build_cap is not None
    if project_capped:
        tasks = rt.store.get_tasks(run.run_id, phase)
        if cap is not None:
            # Count again in the read the waiting tasks come from: another aggregator may
            # have released some since `counts`, and they are in flight now.
            room = cap - sum(t.status in IN_FLIGHT for t in tasks)
        waiting = admission_order(t for t in tasks if t.status is TaskStatus.WAITING)
        release(run, _with_build_slots(run, tasks, waiting[: max(room, 0)], rt), rt)
    elif room > 0:
        # Only the first `room` waiting tasks, by index, not the whole phase.
        waiting = rt.store.waiting_tasks(run.run_id, phase, room)
        if cap is not None and waiting:
            # Count again after that read: another aggregator may have released some
            # since `counts` (tasks only move on, so what it released is counted now).
            room = cap - in_flight(rt.store.count_tasks(run.run_id, phase))
        release(run, waiting[: max(room, 0)], rt)


def _with_build_slots(
    run: RunRecord, tasks: list[TaskRecord], wanted: list[TaskRecord], rt: Runtime
) -> list[TaskRecord]:
    """The wanted builds that got one of the project's slots; the run's ended builds give
    theirs back, and other runs of the project waiting for one are woken."""
    granted, freed = take_build_slots(run, tasks, wanted, rt)
    if freed:
        for other in runs_waiting_for_slots(run, rt):
            advance_run(other, rt)
    return granted


def _with_status(rt: Runtime, run_id: str, phase: Phase, status: TaskStatus) -> list[TaskRecord]:
    return [t for t in rt.store.get_tasks(run_id, phase) if t.status is status]


def _after_director(run: RunRecord, rt: Runtime) -> None:
    (director,) = rt.store.get_tasks(run.run_id, Phase.DIRECTOR)
    if not director.status.terminal:
        return
    if director.status is not TaskStatus.SUCCEEDED or run.halted:
        _finish(run, rt)
        return
    moved = rt.store.update_run(
        run.run_id,
        expect={"phase": Phase.DIRECTOR, "status": RunStatus.RUNNING},
        changes={
            "phase": _deploy_phase(run),
            "director_url": director.url,
            "updated_at": rt.clock(),
        },
    )
    if moved is not None:
        log.info("director deployed at %s: phase %s opens", director.url, moved.phase.value)
        _open_deploys(moved, rt)


def _deploy_phase(run: RunRecord) -> Phase:
    """After build and director: deploys, or a release's first phase."""
    return Phase.STAGE if run.release is not None else Phase.DEPLOY


def _open_deploys(run: RunRecord, rt: Runtime) -> None:
    if run.phase is Phase.STAGE:
        _step_release(run, rt)
    else:
        _step_deploys(run, rt)


def _step_release(run: RunRecord, rt: Runtime) -> None:
    # Imported here: the release engine builds on this module's release and finish.
    from shared.core.release import step_release

    step_release(run, rt)


def _step_deploys(run: RunRecord, rt: Runtime) -> None:
    counts = rt.store.count_tasks(run.run_id, Phase.DEPLOY)
    if not counts.get(TaskStatus.WAITING):
        # Nothing left to release: counting is enough (Firestore bills a count per 1,000
        # entries, a fetch per document), and only the end of the phase needs the tasks.
        if all_terminal(counts):
            _end_deploys(run, rt)
        return
    if not run.halted and _full(counts, rt.policy.deploy_concurrency):
        # Nothing can start nor the phase end: a task in flight steps again as it ends.
        return
    if not run.halted and all(s in _ON_TRACK for s, n in counts.items() if n):
        admit_deploys(run, rt)  # nothing to skip: only the ready ones are read
        return
    with rt.admission.hold(run.run_id):
        tasks = rt.store.get_tasks(run.run_id, Phase.DEPLOY)
        if run.halted:
            waiting = [t for t in tasks if t.status is TaskStatus.WAITING]
            close_tasks(waiting, TaskStatus.CANCELLED, f"not started: {run.halted}", rt)
            tasks = rt.store.get_tasks(run.run_id, Phase.DEPLOY)
        step = next_deploys(tasks)
        for task, reason in step.skip:
            close_tasks([task], TaskStatus.SKIPPED, reason, rt)
        ready = admission_order(step.release)
        if rt.policy.deploy_concurrency is not None:
            busy = sum(t.status in IN_FLIGHT for t in tasks)
            ready = ready[: max(0, rt.policy.deploy_concurrency - busy)]
        _release_deploys(run, ready, rt, tasks)
    if step.finished:
        _end_deploys(run, rt)


# No deploy failed, was skipped or cancelled: no dependant to skip.
_ON_TRACK = frozenset({TaskStatus.WAITING, *IN_FLIGHT, TaskStatus.SUCCEEDED})


def _full(counts: Mapping[TaskStatus, int], cap: int | None) -> bool:
    return cap is not None and in_flight(counts) >= cap


def admit_deploys(run: RunRecord, rt: Runtime) -> None:
    """Release the ready deploys, by priority, while the cap has room: counted, read and
    released under the run's lock (`rt.admission`), as a deploy's readiness changes as
    others end (see `shared.core.handoff`)."""
    with rt.admission.hold(run.run_id):
        counts = rt.store.count_tasks(run.run_id, Phase.DEPLOY)
        cap = rt.policy.deploy_concurrency
        waiting = counts.get(TaskStatus.WAITING, 0)
        room = waiting if cap is None else cap - in_flight(counts)
        released = _release_deploys(run, ready_deploys(run.run_id, room, rt), rt)
        if len(released) >= waiting:  # no deploy waits any more (see `shared.core.handoff`)
            rt.admission.deploys_released.add(run.run_id)


def _release_deploys(
    run: RunRecord, ready: list[TaskRecord], rt: Runtime, tasks: list[TaskRecord] | None = None
) -> list[TaskRecord]:
    """Release the ready deploys that fit; where several aggregators may step the run at
    once, only those holding one of its slots in the store (`shared.core.deploy_slots`).
    Returns those released."""
    granted = take_deploy_slots(run, ready, rt, tasks)
    released: list[TaskRecord] = []
    try:
        released = release(run, granted, rt)
    finally:
        settle_deploy_slots(run, granted, released, rt)
    return released


def _end_deploys(run: RunRecord, rt: Runtime) -> None:
    """Finish, or first roll back what this run changed when deploys failed and it asked."""
    counts = rt.store.count_tasks(run.run_id, Phase.DEPLOY)
    if not run.rollback_on_failure or all_succeeded(counts) or run.cancelled_by:
        _finish(run, rt)
        return
    moved = rt.store.update_run(
        run.run_id,
        expect={"phase": Phase.DEPLOY, "status": RunStatus.RUNNING},
        changes={"phase": Phase.ROLLBACK, "updated_at": rt.clock()},
    )
    if moved is None:
        return
    deploys = {t.service: t for t in rt.store.get_tasks(run.run_id, Phase.DEPLOY)}
    deploys.update({t.service: t for t in rt.store.get_tasks(run.run_id, Phase.DIRECTOR)})
    undo = [
        t
        for t in rt.store.get_tasks(run.run_id, Phase.ROLLBACK)
        if _changed_something(deploys.get(t.service))
    ]
    log.info("deploys failed: rolling back %d services", len(undo))
    release(moved, undo, rt)
    _after_rollback(moved, rt)


def _changed_something(deploy: TaskRecord | None) -> bool:
    """A service served something before this run, and this run may have replaced it."""
    if deploy is None or not deploy.previous or deploy.reused:
        return False
    return deploy.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.TIMED_OUT)


def _after_rollback(run: RunRecord, rt: Runtime) -> None:
    counts = rt.store.count_tasks(run.run_id, Phase.ROLLBACK)
    if not counts.get(TaskStatus.PENDING) and not counts.get(TaskStatus.RUNNING):
        _finish(run, rt)


def close_tasks(tasks: list[TaskRecord], status: TaskStatus, reason: str, rt: Runtime) -> None:
    """End tasks that will never run (skipped, cancelled, timed out), each once."""
    for task in tasks:
        rt.store.complete_task(
            TaskCompletion(
                run_id=task.run_id,
                task_id=task.task_id,
                phase=task.phase,
                service=task.service,
                status=status,
                error=reason,
                attempt=task.attempt,
                finished_at=rt.clock(),
            )
        )


def _finish(run: RunRecord, rt: Runtime) -> None:
    finish_run(run, rt.store.get_tasks(run.run_id), rt)


def finish_run(
    run: RunRecord, tasks: list[TaskRecord], rt: Runtime, status: RunStatus | None = None
) -> None:
    """Write the run's one result and announce it; only the first caller does."""
    now = rt.clock()
    if status is None:
        if run.error:
            status = RunStatus.FAILED
        elif run.cancelled_by:
            status = RunStatus.CANCELLED
        else:
            status = outcome(tasks)
    final = run.model_copy(update={"status": status, "finished_at": now, "updated_at": now})
    result = assemble_result(final, tasks, status)
    rt.admission.deploys_released.discard(run.run_id)  # a long-lived aggregator's memory
    if rt.store.finish_run(run.run_id, result):
        log.info(
            "run finished: %s (%d images, %d urls, %d errors)",
            status.value,
            len(result.images),
            len(result.urls),
            len(result.errors),
        )
        free_run_deploys(final, tasks, rt)
        if after_finish(final, tasks, rt):
            for other in runs_waiting_for_slots(run, rt):
                advance_run(other, rt)
        rt.bus.publish(
            TOPIC_RESULTS,
            RunFinished(run_id=run.run_id, status=status, result=result),
            attributes={"run_id": run.run_id, "status": status.value},
        )
