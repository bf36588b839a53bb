"""The dashboard's view model: what a run looked like, as plain data, from stored records.

Pure functions over `RunRecord` and `TaskRecord`: the web pages (`pages`) and the terminal
timeline (`shared.cli.timeline`) draw the same `RunView`, so they never disagree. Only
the `RunStore` port is read (`load_*`), so it works on SQLite and Firestore alike.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from shared.core.state import assemble_result
from shared.messages import Phase, RunRecord, RunStatus, TaskRecord, TaskStatus, utcnow
from shared.ports import RunStore

_PHASES = list(Phase)
# The tasks that put a service up (a release's stage reports its stable URL).
_SERVES = (Phase.DIRECTOR, Phase.DEPLOY, Phase.STAGE)
_COMMIT = re.compile(r"@([0-9a-f]{7,40})\b")


@dataclass(frozen=True)
class Bar:
    """One task on the shared time axis, in seconds from the run's start."""

    phase: str
    status: str  # a TaskStatus value
    start: float
    end: float
    label: str


@dataclass(frozen=True)
class Row:
    """One service: its bars, what it produced, and why it waited or was skipped."""

    service: str
    dataflow: str | None
    status: str
    bars: list[Bar]
    image: str | None = None
    url: str | None = None
    previous: str | None = None
    seconds: float | None = None
    error: str | None = None
    error_phase: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Trigger:
    """How a run was asked for: `kind` is CLI, HTTP, push or Pub/Sub."""

    kind: str
    who: str
    repository: str = ""
    branch: str = ""
    commit: str = ""


@dataclass(frozen=True)
class RunView:
    run_id: str
    status: str
    phase: str
    trigger: Trigger
    created_at: datetime
    seconds: float  # elapsed: to the end, or to now while running
    finished: bool
    counts: dict[str, int]  # services by where they got to
    rows: list[Row] = field(default_factory=list)
    error: str | None = None
    halted: str | None = None
    environment: str = ""
    architecture_file: str = ""


def trigger_of(run: RunRecord) -> Trigger:
    """Read the trigger from what the request carried (`requested_by`, `supersede_key`)."""
    who = run.requested_by or ""
    if who.startswith("github:") or (run.supersede_key or "").startswith("github:"):
        _, _, rest = (run.supersede_key or "").partition(":")
        repository, _, branch = rest.rpartition(":")
        match = _COMMIT.search(run.architecture_file)
        commit = match.group(1) if match else ""
        return Trigger("push", who.removeprefix("github:"), repository, branch, commit)
    if who == "cli":
        return Trigger("CLI", who)
    if who.startswith("http"):
        return Trigger("HTTP", who)
    return Trigger("Pub/Sub", who)


def build_view(run: RunRecord, tasks: Sequence[TaskRecord], now: datetime | None = None) -> RunView:
    """The run as the pages draw it; `now` ends the bars of tasks still running."""
    now = now or utcnow()
    end = run.finished_at or max([now, *(t.finished_at for t in tasks if t.finished_at)])
    result = assemble_result(run, tasks)
    by_service: dict[str, list[TaskRecord]] = {}
    for task in sorted(tasks, key=lambda t: _PHASES.index(t.phase)):
        by_service.setdefault(task.service, []).append(task)
    up = {t.service: t.status for t in tasks if t.phase in _SERVES}
    rows = []
    for service, own in by_service.items():
        entry = result.services.get(service)
        status = entry.status if entry else _rollback_status(own)
        rows.append(_row(run, own, status, end, up))
    # The director first, then by name: rows stay put while a live page refreshes.
    directors = {t.service for t in tasks if t.phase is Phase.DIRECTOR}
    rows.sort(key=lambda row: (row.service not in directors, row.service))
    return RunView(
        run_id=run.run_id,
        status=run.status.value,
        phase=run.phase.value,
        trigger=trigger_of(run),
        created_at=run.created_at,
        seconds=round(max(0.0, (end - run.created_at).total_seconds()), 3),
        finished=run.status.terminal,
        counts=dict(Counter(r.status for r in rows)),
        rows=rows,
        error=run.error,
        halted=run.halted,
        environment=run.environment,
        architecture_file=run.architecture_file,
    )


def _rollback_status(tasks: list[TaskRecord]) -> str:
    return tasks[-1].status.value


def _row(
    run: RunRecord,
    tasks: list[TaskRecord],
    status: str,
    end: datetime,
    up: Mapping[str, TaskStatus],
) -> Row:
    bars = [bar for task in tasks if (bar := _bar(run, task, end)) is not None]
    failed = [t for t in tasks if t.error and t.status in (TaskStatus.FAILED, TaskStatus.TIMED_OUT)]
    build = next((t for t in tasks if t.phase is Phase.BUILD), None)
    out = next((t for t in reversed(tasks) if t.phase in (Phase.BUILD, *_SERVES)), None)
    durations = [t.duration_seconds for t in tasks if t.duration_seconds is not None]
    return Row(
        service=tasks[0].service,
        dataflow=tasks[0].dataflow,
        status=status,
        bars=bars,
        image=build.image if build and build.image else (out.image if out else None),
        url=out.url if out and out.phase is not Phase.BUILD else None,
        previous=out.previous if out else None,
        seconds=round(sum(durations), 3) if durations else None,
        error=failed[0].error if failed else None,
        error_phase=failed[0].phase.value if failed else None,
        note=why(run, tasks, up),
    )


def _bar(run: RunRecord, task: TaskRecord, end: datetime) -> Bar | None:
    start = task.started_at or (task.finished_at if task.status.terminal else None)
    if start is None:
        return None
    stop = task.finished_at or end
    offset = (start - run.created_at).total_seconds()
    length = max(0.0, (stop - start).total_seconds())
    label = task.phase.value
    if task.status is not TaskStatus.SUCCEEDED:
        label = f"{task.phase.value} {_WORD[task.status]}"
    if task.reused and task.status is TaskStatus.SUCCEEDED:
        label = f"{task.phase.value} {'reused' if task.phase is Phase.BUILD else 'unchanged'}"
    return Bar(
        task.phase.value, task.status.value, round(offset, 3), round(offset + length, 3), label
    )


_WORD = {
    TaskStatus.WAITING: "waiting",
    TaskStatus.PENDING: "queued",
    TaskStatus.RUNNING: "running",
    TaskStatus.SUCCEEDED: "ok",
    TaskStatus.FAILED: "failed",
    TaskStatus.SKIPPED: "skipped",
    TaskStatus.TIMED_OUT: "timed out",
    TaskStatus.CANCELLED: "cancelled",
}


def why(run: RunRecord, tasks: Sequence[TaskRecord], up: Mapping[str, TaskStatus]) -> str:
    """Why this service waited, was skipped or was left alone, in a few words ("" if
    nothing needs saying). Derived from its task records, the run's phase, and `up`: the
    status of every service's deploy (or director) task, for "waiting on ingest"."""
    # Rollbacks, and a release's reverts until needed, say nothing of how the run went.
    tasks = [t for t in tasks if t.phase is not Phase.ROLLBACK and not _unused_revert(run, t)]
    for task in tasks:
        if task.status in (TaskStatus.SKIPPED, TaskStatus.CANCELLED) and task.error:
            word = "skipped" if task.status is TaskStatus.SKIPPED else "cancelled"
            return f"{word}: {_reason(task.error)}"
        if task.status is TaskStatus.RUNNING:
            return ""  # its bar says it
        if task.status in (TaskStatus.FAILED, TaskStatus.TIMED_OUT):
            return f"{task.phase.value} {_WORD[task.status]}: see its error"
        if task.status is TaskStatus.WAITING:
            return _waiting(run, task, up)
        if task.status is TaskStatus.PENDING:
            return "queued: waiting for a worker"
    if not tasks:
        return ""
    last = tasks[-1]
    if last.phase is Phase.PROMOTE and last.reused:  # nothing staged: a release left it
        return "unchanged: not released"
    if last.reused and last.status is TaskStatus.SUCCEEDED and last.phase is not Phase.BUILD:
        return "unchanged: not redeployed"
    return ""


def _unused_revert(run: RunRecord, task: TaskRecord) -> bool:
    waiting = task.phase is Phase.REVERT and task.status is TaskStatus.WAITING
    return waiting and not run.rollback_of  # a rollback run is its reverts


def _reason(error: str) -> str:
    return error.removeprefix("not started: ").removeprefix("not deployed: ")


def _waiting(run: RunRecord, task: TaskRecord, up: Mapping[str, TaskStatus]) -> str:
    if run.status.terminal:
        return f"skipped: {run.halted}" if run.halted else "not started"
    if task.phase is Phase.BUILD:
        return "held by the build cap" if not run.halted else f"held: {run.halted}"
    if run.phase is Phase.BUILD:
        return "waiting on the builds"
    if run.phase is Phase.DIRECTOR and task.phase in (Phase.DEPLOY, Phase.STAGE):
        return "waiting on the director"
    if task.phase in _RELEASE_WAITS:
        return _RELEASE_WAITS[task.phase]
    blocking = [d for d in task.depends_on if up.get(d) is not TaskStatus.SUCCEEDED]
    if blocking:
        return f"waiting on {', '.join(blocking)}"
    return "held by the deploy cap"


_RELEASE_WAITS = {
    Phase.VERIFY: "waiting to be verified",
    Phase.PROMOTE: "waiting to be promoted",
}


def load_run(store: RunStore, run_id: str, now: datetime | None = None) -> RunView | None:
    """The run's view read through the store port; None for an unknown run."""
    run = store.get_run(run_id)
    if run is None:
        return None
    return build_view(run, store.get_tasks(run_id), now)


@dataclass(frozen=True)
class RunSummary:
    """One line of the runs list."""

    run_id: str
    status: str
    trigger: Trigger
    created_at: datetime
    seconds: float | None
    counts: dict[str, int]
    environment: str


def load_runs(store: RunStore, limit: int = 30) -> list[RunSummary]:
    """Recent runs; a finished run is counted from its stored result (one read), a
    running one from its tasks."""
    summaries = []
    for run in store.list_runs(limit):
        result = store.get_result(run.run_id) if run.status is not RunStatus.RUNNING else None
        if result is None:
            result = assemble_result(run, store.get_tasks(run.run_id))
        end = run.finished_at
        summaries.append(
            RunSummary(
                run_id=run.run_id,
                status=run.status.value,
                trigger=trigger_of(run),
                created_at=run.created_at,
                seconds=round((end - run.created_at).total_seconds(), 1) if end else None,
                counts=dict(Counter(s.status for s in result.services.values())),
                environment=run.environment,
            )
        )
    return summaries
