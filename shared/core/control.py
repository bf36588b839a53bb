"""Runs that need a hand: cancellation, the deadline sweep, and tasks whose messages
could never be handled (poison or dead-lettered).

Pub/Sub may never deliver a message at all, and a worker may die mid-task: the sweep is
what guarantees that every run still finishes, with exactly one result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.core.publishing import publish_tasks
from shared.core.run_engine import (
    advance_run,
    cancel_submitted_builds,
    close_tasks,
    finish_run,
)
from shared.core.runtime import Runtime
from shared.logs import log_context
from shared.messages import Phase, RunRecord, RunStatus, TaskRecord, TaskStatus

log = logging.getLogger(__name__)


def cancel_run(run_id: str, rt: Runtime, *, by: str) -> RunRecord | None:
    """Stop dispatching, cancel submitted builds, and end the run `cancelled` once what
    is in flight has ended. Returns the run, or None if it is unknown."""
    with log_context(run_id=run_id):
        run = rt.store.get_run(run_id)
        if run is None or run.status.terminal:
            return run
        marked = rt.store.update_run(
            run_id,
            expect={"cancelled_by": None},
            changes={"cancelled_by": by, "halted": f"cancelled by {by}", "updated_at": rt.clock()},
        )
        if marked is not None:
            log.info("run cancelled by %s", by)
        not_started = [
            t
            for t in rt.store.get_tasks(run_id)
            # A release's reverts still run: they put traffic back.
            if t.status in (TaskStatus.WAITING, TaskStatus.PENDING) and t.phase is not Phase.REVERT
        ]
        close_tasks(not_started, TaskStatus.CANCELLED, f"cancelled by {by} before it started", rt)
        cancel_submitted_builds(run_id, rt)
        advance_run(run_id, rt)
        return rt.store.get_run(run_id)


def fail_task(run_id: str, task_id: str, reason: str, rt: Runtime) -> None:
    """A task whose message can never be handled fails, so its run does not hang."""
    task = rt.store.get_task(task_id)
    if task is None or task.run_id != run_id:
        log.warning("no task %s in run %s to fail: %s", task_id, run_id, reason)
        return
    close_tasks([task], TaskStatus.FAILED, reason, rt)
    advance_run(run_id, rt)


@dataclass
class SweepReport:
    runs: int = 0
    timed_out: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)


def sweep(rt: Runtime, now: datetime | None = None) -> SweepReport:
    """Fail overdue tasks as `timed_out`, re-send task messages that were lost, and move
    every active run on. Safe to run often and from several places at once.

    Embedded (`rt.driver` set), only the runs this process drives are swept: another
    process's run is left to it, and one whose driver is gone is ended as abandoned,
    never re-sent here."""
    now = now or rt.clock()
    report = SweepReport()
    for run in rt.store.list_active_runs():
        owner = run_owner(run, rt)
        if owner == "gone":
            abandon_run(run, rt)
        if owner != "ours":
            continue
        report.runs += 1
        with log_context(run_id=run.run_id):
            _sweep_run(run, now, rt, report)
    if report.timed_out or report.republished:
        log.info(
            "sweep: %d runs, %d tasks timed out, %d re-sent",
            report.runs,
            len(report.timed_out),
            len(report.republished),
        )
    return report


def run_owner(run: RunRecord, rt: Runtime) -> str:
    """Who drives `run`, from this process's point of view: "ours", "other" (a live
    process, or one on another host) or "gone" (its driver exited: the run is abandoned).

    On Google Cloud (no `rt.driver`) every run without a local driver is ours to sweep."""
    if rt.driver is None:
        return "ours" if run.driver_pid is None else "other"
    if run.driver_pid is None:
        return "gone"  # written by an archdeploy that did not record its driver
    me = rt.driver
    if run.driver_host and run.driver_host != me.host:
        return "other"
    if (run.driver_pid, run.driver_started) == (me.pid, me.started):
        return "ours"
    return "other" if _alive(run.driver_pid, run.driver_started) else "gone"


def abandoned_reason(run: RunRecord) -> str:
    who = f"pid {run.driver_pid}" if run.driver_pid else "unknown"
    return f"abandoned: its archdeploy process ({who}) is gone"


def abandon_run(run: RunRecord, rt: Runtime) -> None:
    """End a run whose driver is gone: its open tasks fail, naming why, nothing new starts
    and nothing is re-sent, and the run ends `failed` with the reason as its error."""
    reason = abandoned_reason(run)
    with log_context(run_id=run.run_id):
        rt.store.update_run(
            run.run_id,
            expect={"error": None},
            changes={"halted": reason, "error": reason, "updated_at": rt.clock()},
        )
        open_tasks = [t for t in rt.store.get_tasks(run.run_id) if not t.status.terminal]
        close_tasks(open_tasks, TaskStatus.FAILED, reason, rt)
        final = rt.store.get_run(run.run_id) or run
        finish_run(final, rt.store.get_tasks(run.run_id), rt, RunStatus.FAILED)
        log.warning("run %s", reason)


def end_abandoned(rt: Runtime) -> list[str]:
    """End every active run whose driver is gone (what `status`, `runs` and `up` do
    first); returns their ids."""
    ended = []
    for run in rt.store.list_active_runs():
        if run_owner(run, rt) == "gone":
            abandon_run(run, rt)
            ended.append(run.run_id)
    return ended


def _alive(pid: int, started: float | None) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        created = round(process.create_time(), 2)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.Error:
        return False
    return started is None or abs(created - started) < 0.05


def _sweep_run(run: RunRecord, now: datetime, rt: Runtime, report: SweepReport) -> None:
    tasks = [t for t in rt.store.get_tasks(run.run_id) if not t.status.terminal]
    if now - run.created_at > timedelta(seconds=rt.policy.run_deadline):
        # Cancel first: it looks for builds still running, which the time-out ends.
        cancel_submitted_builds(run.run_id, rt)
        ending = [t for t in tasks if t.phase not in _UNDOING]
        _time_out(ending, f"the run's deadline of {rt.policy.run_deadline:g}s passed", rt, report)
        # Putting traffic back is still owed: those tasks keep their own deadlines.
        tasks = [t for t in tasks if t.phase in _UNDOING]
    overdue = [t for t in tasks if _past_deadline(t, now, rt)]
    for task in overdue:
        reason = f"no result within the {task.phase.value} deadline of "
        _time_out([task], reason + f"{rt.policy.deadlines[task.phase]:g}s", rt, report)
    lost = [t for t in tasks if t not in overdue and _lost(t, now, rt)]
    publish_tasks(run, lost, rt)
    report.republished.extend(t.task_id for t in lost)
    advance_run(run.run_id, rt)


_UNDOING = (Phase.REVERT, Phase.ROLLBACK)


def _time_out(tasks: list[TaskRecord], reason: str, rt: Runtime, report: SweepReport) -> None:
    close_tasks(tasks, TaskStatus.TIMED_OUT, reason, rt)
    report.timed_out.extend(t.task_id for t in tasks)


def _past_deadline(task: TaskRecord, now: datetime, rt: Runtime) -> bool:
    since = task.released_at or task.started_at
    if task.status is TaskStatus.WAITING or since is None:
        return False
    return now - since > timedelta(seconds=rt.policy.deadlines[task.phase])


def _lost(task: TaskRecord, now: datetime, rt: Runtime) -> bool:
    """Released but never claimed, or claimed by a worker whose lease ran out (it died):
    its message is re-sent so a worker can (re)claim it. A submitted build is not lost:
    its result comes as a build event."""
    if task.status is TaskStatus.PENDING and task.released_at is not None:
        return now - task.released_at > timedelta(seconds=rt.policy.republish_after)
    if task.status is TaskStatus.RUNNING and not task.build_id:
        return task.lease_expires_at is not None and task.lease_expires_at < now
    return False


__all__ = [
    "SweepReport",
    "abandon_run",
    "cancel_run",
    "end_abandoned",
    "fail_task",
    "run_owner",
    "sweep",
]
