"""Which waiting deploys may start, read without the whole phase.

A deploy is ready once every dependency it has in the phase has succeeded
(`state.next_deploys`). Under a cap most steps only fill a slot or two, yet deciding that
from the whole phase read 300 records and walked them all at every step: in the capped
benchmark, the larger part of the interpreter's time (docs/performance.md, "Issue 19:
the slot hand-off"). Here the waiting deploys are read by rank from their index
(`RunStore.waiting_tasks`), a few at first, and a dependency outside what was read is
looked up by its id, until `room` ready deploys are found or none is left. Skips (a
dependency failed) and the end of the phase still need every task: `run_engine` reads
the whole phase for those, when the counts say some deploy did not succeed.
"""

from __future__ import annotations

from shared.core.runtime import Runtime
from shared.messages import Phase, TaskRecord, TaskStatus, task_id_for

FIRST_READ = 16  # waiting deploys read at first; four times more each time it falls short


def ready_deploys(run_id: str, room: int, rt: Runtime) -> list[TaskRecord]:
    """Up to `room` waiting deploys of the run whose dependencies all succeeded, in
    admission order (rank, then file order)."""
    limit = max(FIRST_READ, 4 * room)
    succeeded: dict[str, bool] = {}  # dependencies looked up, read or not, by service
    while room > 0:
        waiting = rt.store.waiting_tasks(run_id, Phase.DEPLOY, limit)
        succeeded.update((t.service, False) for t in waiting)
        ready = [t for t in waiting if _all_succeeded(t, succeeded, rt)]
        if len(ready) >= room or len(waiting) < limit:
            return ready[:room]
        limit *= 4
    return []


def _all_succeeded(task: TaskRecord, succeeded: dict[str, bool], rt: Runtime) -> bool:
    for service in task.depends_on:
        if service not in succeeded:
            dependency = rt.store.get_task(task_id_for(task.run_id, Phase.DEPLOY, service))
            # Not a deploy of this run (another dataflow's): nothing to wait for.
            ok = dependency is None or dependency.status is TaskStatus.SUCCEEDED
            succeeded[service] = ok
        if not succeeded[service]:
            return False
    return True
