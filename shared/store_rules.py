"""The store's compare-and-set rules, as pure functions every `RunStore` applies.

Each takes the current record and returns the next one, or None when the write must
not happen (the compare failed). Stores differ only in how they read and write
atomically (SQLite transaction, Firestore transaction, a lock in the fake).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from shared.messages import RunRecord, RunResult, TaskCompletion, TaskRecord, TaskStatus


def released(
    task: TaskRecord, spec_updates: Mapping[str, Any] | None, now: datetime
) -> TaskRecord | None:
    """The task pending, its spec with `spec_updates`. A spec with nothing to update is
    shared with the waiting record, not copied (a build's: 1,000 copies a run of 1,000
    services); records are never changed in place, only copied."""
    if task.status is not TaskStatus.WAITING:
        return None
    spec = task.spec
    if spec is not None and spec_updates:
        spec = spec.model_copy(update=dict(spec_updates))
    return task.model_copy(update={"status": TaskStatus.PENDING, "spec": spec, "released_at": now})


def claimed(
    task: TaskRecord, worker: str, lease_seconds: float, now: datetime
) -> TaskRecord | None:
    lease_live = task.lease_expires_at is not None and task.lease_expires_at > now
    if task.status is TaskStatus.RUNNING and lease_live:
        return None
    if task.status not in (TaskStatus.PENDING, TaskStatus.RUNNING):
        return None
    return task.model_copy(
        update={
            "status": TaskStatus.RUNNING,
            "attempt": task.attempt + 1,
            "claimed_by": worker,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            "started_at": now,
        }
    )


def completed(task: TaskRecord, completion: TaskCompletion) -> TaskRecord | None:
    if task.status.terminal or superseded(task, completion):
        return None
    return task.model_copy(
        update={
            "status": completion.status,
            "image": completion.image or task.image,
            "url": completion.url or task.url,
            "error": completion.error,
            "build_id": completion.build_id or task.build_id,
            "reused": completion.reused,
            "previous": completion.previous or task.previous,
            "release": completion.release or task.release,
            "started_at": completion.started_at or task.started_at,
            "finished_at": completion.finished_at,
            "lease_expires_at": None,
        }
    )


def superseded(task: TaskRecord, completion: TaskCompletion) -> bool:
    """The completion comes from an attempt the task has since moved past: its worker
    outlived its lease and another claimed the task. Only the attempt holding the task may
    end it, or a slow first attempt's late output would win over the one in flight.

    A build event names its build, not the attempt that submitted it: it is stale when the
    task waits on another build (when the task has no build id yet, it cannot tell)."""
    if completion.build_id:
        return task.build_id is not None and completion.build_id != task.build_id
    return completion.attempt < task.attempt


def with_build_id(task: TaskRecord, build_id: str) -> TaskRecord:
    return task.model_copy(update={"build_id": build_id})


def run_updated(
    run: RunRecord, expect: Mapping[str, Any], changes: Mapping[str, Any]
) -> RunRecord | None:
    current = json.loads(run.model_dump_json())
    wanted = json.loads(RunRecord.model_validate({**run.model_dump(), **expect}).model_dump_json())
    if any(current.get(k) != wanted.get(k) for k in expect):
        return None
    return RunRecord.model_validate({**run.model_dump(), **changes})


def run_finished(run: RunRecord, result: RunResult) -> RunRecord | None:
    if run.status.terminal:
        return None
    return run.model_copy(
        update={
            "status": result.status,
            "phase": result.phase,
            "finished_at": result.finished_at,
            "updated_at": result.finished_at or run.updated_at,
        }
    )


# --- what the scheduler keeps across runs ------------------------------------------------

# Weight of the newest sample in a service's smoothed duration (an exponentially weighted
# moving average): one slow build moves the estimate by a third, not all the way.
DURATION_ALPHA = 0.3


def smoothed(previous: float | None, sample: float, alpha: float = DURATION_ALPHA) -> float:
    """The new estimate after `sample`: the sample itself when nothing was seen before."""
    if previous is None:
        return sample
    return alpha * sample + (1 - alpha) * previous


def durations_updated(
    current: Mapping[str, float], samples: Mapping[str, float]
) -> dict[str, float]:
    """Every key of `samples` smoothed into `current` (`phase:service` -> seconds)."""
    updated = dict(current)
    for key, seconds in samples.items():
        if seconds >= 0:
            updated[key] = round(smoothed(current.get(key), seconds), 4)
    return updated


def slots_taken(
    held: Mapping[str, datetime],
    *,
    release: Sequence[str],
    want: Sequence[str],
    cap: int,
    lease_seconds: float,
    now: datetime,
) -> tuple[dict[str, datetime], list[str], int]:
    """One project's build slots (holder task id -> lease expiry) after freeing `release`
    and expired leases, then granting `want` in order while fewer than `cap` are held.

    Returns (the slots now held, the ids of `want` holding one, how many were freed). A
    holder that has a slot keeps it as it is: asking twice takes one slot."""
    gone = set(release)
    live = {h: exp for h, exp in held.items() if h not in gone and exp > now}
    freed = sum(1 for h in held if h in gone)
    granted: list[str] = []
    for holder in dict.fromkeys(want):
        if holder in live:
            granted.append(holder)
        elif len(live) < cap:
            live[holder] = now + timedelta(seconds=lease_seconds)
            granted.append(holder)
    return live, granted, freed
