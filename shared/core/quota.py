"""What the scheduler shares across runs: the project's build slots and task durations.

Cloud Build's concurrent-build quota belongs to the project, not to a run: with
`RunPolicy.project_build_cap`, a build is released only once it holds one of the
project's slots in the store (`RunStore.build_slots`), and its slot is freed at the next
step of its run after it ends, or when the run finishes. A slot's lease is the build
deadline: a run killed with builds in flight cannot keep the quota past it (its builds
would have been timed out by then anyway).

A finished run also records how long its tasks took (`RunStore.record_durations`), so
the next run's priorities (`shared.core.priority`) use measured durations.
"""

from __future__ import annotations

import logging

from shared.core.priority import duration_samples
from shared.core.runtime import Runtime
from shared.core.state import in_flight
from shared.errors import BackendError
from shared.messages import Phase, RunRecord, TaskRecord, TaskStatus
from shared.ports import BuildSlots

log = logging.getLogger(__name__)


def take_build_slots(
    run: RunRecord, tasks: list[TaskRecord], wanted: list[TaskRecord], rt: Runtime
) -> tuple[list[TaskRecord], int]:
    """Free the slots of the run's ended builds and take slots for `wanted`, in one store
    call. Returns (the wanted builds that hold a slot, in order; how many slots were
    freed: other runs of the project may now start builds).

    Turns: when this step freed slots and another run of the project has builds waiting
    (and room to start them), the slots it just took go back (`_yield_slots`), up to the
    number freed: the other run, woken by the caller, takes them. Otherwise a run whose
    builds keep ending would keep taking its own freed slots, and another run of the
    project would start nothing until it had no build left to start."""
    cap = rt.policy.project_build_cap
    if cap is None:
        return wanted, 0
    slots = _slots(rt)
    granted, freed = slots.build_slots(
        run.project_id,
        release=[t.task_id for t in tasks if t.phase is Phase.BUILD and t.status.terminal],
        want=[t.task_id for t in wanted],
        cap=cap,
        lease_seconds=rt.policy.deadlines[Phase.BUILD],
        now=rt.clock(),
    )
    if freed and granted:
        granted = _yield_slots(run, granted, freed, rt)
    if len(granted) < len(wanted):
        log.info("project build cap %d reached: %d builds wait", cap, len(wanted) - len(granted))
    held = set(granted)
    return [t for t in wanted if t.task_id in held], freed


def _yield_slots(run: RunRecord, granted: list[str], freed: int, rt: Runtime) -> list[str]:
    """`granted` less the slots given back to other runs waiting (the last ones: the
    lowest priority), up to `freed`."""
    if not any(_can_start_builds(other, rt) for other in runs_waiting_for_slots(run, rt)):
        return granted
    keep = len(granted) - min(freed, len(granted))
    assert rt.policy.project_build_cap is not None
    _slots(rt).build_slots(
        run.project_id,
        release=granted[keep:],
        want=[],
        cap=rt.policy.project_build_cap,
        lease_seconds=0,
        now=rt.clock(),
    )
    log.info("%d build slots left to other runs of the project", len(granted) - keep)
    return granted[:keep]


def _can_start_builds(run_id: str, rt: Runtime) -> bool:
    """Whether the run has builds waiting and room under its own build concurrency."""
    counts = rt.store.count_tasks(run_id, Phase.BUILD)
    room = rt.policy.build_concurrency is None or in_flight(counts) < rt.policy.build_concurrency
    return bool(counts.get(TaskStatus.WAITING)) and room


def _slots(rt: Runtime) -> BuildSlots:
    return rt.slots if rt.slots is not None else rt.store


def runs_waiting_for_slots(run: RunRecord, rt: Runtime) -> list[str]:
    """Other running runs of the project still in their build phase: slots freed here may
    let them start builds, and nothing else would wake one that has none in flight."""
    return [
        other.run_id
        for other in rt.store.list_active_runs()
        if other.run_id != run.run_id
        and other.project_id == run.project_id
        and other.phase is Phase.BUILD
        and not other.halted
    ]


def after_finish(run: RunRecord, tasks: list[TaskRecord], rt: Runtime) -> bool:
    """Once a run has finished: remember its durations, free any slot it still holds.
    Returns whether slots were freed. Neither may fail the run: both are logged."""
    samples = duration_samples(tasks)
    try:
        if samples:
            rt.store.record_durations(run.project_id, samples)
        if rt.policy.project_build_cap is None:
            return False
        builds = [t.task_id for t in tasks if t.phase is Phase.BUILD]
        _, freed = _slots(rt).build_slots(
            run.project_id,
            release=builds,
            want=[],
            cap=rt.policy.project_build_cap,
            lease_seconds=0,
            now=rt.clock(),
        )
        return freed > 0
    except BackendError:
        log.warning("could not record durations or free build slots", exc_info=True)
        return False
