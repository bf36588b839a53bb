"""The run's deploy cap, held in the store where several aggregators step one run at once.

On Google Cloud, Pub/Sub push may hand a run's completions to different function
instances at once, each stepping the run. Builds need nothing more than counting again
after the read (every waiting build is ready, taken in one fixed order), but a deploy
becomes ready when its dependency ends: two instances that each counted the room before
the other released could each pick different ready deploys and, together, pass
`deploy_concurrency`. Embedded, every admitter of a run serialises on `rt.admission`
and none of this is needed (`rt.in_process`).

So, there, a deploy is released only once it holds one of the run's deploy slots in the
store: the `build_slots` compare-and-set under the key `deploys:{run_id}`, with the cap
`deploy_concurrency` and twice the deploy deadline as the lease. A slot is freed:
- when the aggregator applies the deploy's completion and its task has ended in the store
  (a late completion of an earlier attempt of a task running again frees nothing);
- when an admitter gets fewer slots than it asked for: it reads the phase and frees the
  slots of the deploys that ended without their completion freeing it (the sweep timed
  them out, `control` failed or cancelled them, a completion was lost), then asks again;
- when a slot was granted for a deploy another admitter released first and that ended
  since (the release's compare-and-set is refused): at once, if the deploy is not in flight;
- when the run finishes (every deploy's slot, in one call).
Freeing is idempotent and a holder keeps one slot however often it asks: a redelivered
completion or admission neither frees twice nor takes twice.
"""

from __future__ import annotations

import logging

from shared.core.runtime import Runtime
from shared.core.state import IN_FLIGHT
from shared.errors import BackendError
from shared.messages import Phase, RunRecord, TaskCompletion, TaskRecord

log = logging.getLogger(__name__)

# A slot's lease, in deploy deadlines: the sweep times a deploy out once its deadline from
# its release has passed, at its next pass, so the slot must outlive that deadline by at
# least a sweep interval. Leases only bound a slot nothing frees: one taken by an instance
# that died before its release (then asked for again by the next step, or freed at the
# run's end).
LEASE_DEADLINES = 2


def store_held(rt: Runtime) -> bool:
    """Whether the run's deploy cap is held by slots in the store: capped, and stepped by
    admitters that do not share `rt.admission` (separate functions)."""
    return rt.policy.deploy_concurrency is not None and not rt.in_process


def slot_key(run_id: str) -> str:
    return f"deploys:{run_id}"


def take_deploy_slots(
    run: RunRecord, ready: list[TaskRecord], rt: Runtime, tasks: list[TaskRecord] | None = None
) -> list[TaskRecord]:
    """The deploys of `ready` (in order) that hold one of the run's slots. `tasks`: the
    phase, if the caller read it (the ended deploys' slots are freed first)."""
    if not ready or not store_held(rt):
        return ready
    ended = [] if tasks is None else _ended(tasks)
    granted = _slots(run.run_id, ended, [t.task_id for t in ready], rt)
    if len(granted) < len(ready) and tasks is None:
        # Full, by the store: a deploy may have ended without its completion freeing its
        # slot (timed out, failed by the sweep, lost): free those and ask again.
        ended = _ended(rt.store.get_tasks(run.run_id, Phase.DEPLOY))
        granted = _slots(run.run_id, ended, [t.task_id for t in ready], rt)
    if len(granted) < len(ready):
        log.info("deploy cap full in the store: %d ready deploys wait", len(ready) - len(granted))
    held = set(granted)
    return [t for t in ready if t.task_id in held]


def settle_deploy_slots(
    run: RunRecord, granted: list[TaskRecord], released: list[TaskRecord], rt: Runtime
) -> None:
    """Free the slots taken for deploys this call could not release (another admitter
    did, or they ended since): unless the deploy is in flight, no one else frees them."""
    if not store_held(rt):
        return
    done = {t.task_id for t in released}
    unreleased = [t.task_id for t in granted if t.task_id not in done]
    stale = [
        task_id
        for task_id in unreleased
        if (task := rt.store.get_task(task_id)) is None or task.status not in IN_FLIGHT
    ]
    if stale:
        _slots(run.run_id, stale, [], rt)


def free_ended_deploy(completion: TaskCompletion, task: TaskRecord | None, rt: Runtime) -> None:
    """The aggregator applied a deploy's completion: free its slot if the task has ended
    in the store (`task`: as applied, or None to read it)."""
    if completion.phase is not Phase.DEPLOY or not store_held(rt):
        return
    task = task or rt.store.get_task(completion.task_id)
    if task is not None and task.status.terminal:
        _slots(completion.run_id, [task.task_id], [], rt)


def free_run_deploys(run: RunRecord, tasks: list[TaskRecord], rt: Runtime) -> None:
    """The run has finished: free every slot its deploys still hold. Logged, never fatal:
    the key is the run's own, so a slot left only leaves a record behind."""
    if not store_held(rt):
        return
    deploys = [t.task_id for t in tasks if t.phase is Phase.DEPLOY]
    try:
        if deploys:
            _slots(run.run_id, deploys, [], rt)
    except BackendError:
        log.warning("could not free the run's deploy slots", exc_info=True)


def _ended(tasks: list[TaskRecord]) -> list[str]:
    return [t.task_id for t in tasks if t.phase is Phase.DEPLOY and t.status.terminal]


def _slots(run_id: str, release: list[str], want: list[str], rt: Runtime) -> list[str]:
    assert rt.policy.deploy_concurrency is not None
    granted, _ = rt.store.build_slots(
        slot_key(run_id),
        release=release,
        want=want,
        cap=rt.policy.deploy_concurrency,
        lease_seconds=LEASE_DEADLINES * rt.policy.deadlines[Phase.DEPLOY] if want else 0,
        now=rt.clock(),
    )
    return granted
