"""The aggregator: applies each completion once, then advances its run.

The step itself, and the releasing and finishing it does, is `shared.core.run_engine`.
"""

from __future__ import annotations

import logging

from shared.core.deploy_slots import free_ended_deploy
from shared.core.run_engine import BUILD_FAILED, advance_run, halt_run
from shared.core.runtime import Runtime
from shared.logs import log_context
from shared.messages import Phase, TaskCompletion, TaskRecord, TaskStatus

log = logging.getLogger(__name__)


def record_completion(completion: TaskCompletion, rt: Runtime, *, stored: bool = False) -> None:
    """Apply a completion once, then move the run on if its phase is done.

    `stored`: its sender wrote it to the store before publishing it (the worker always
    does, `STORED`), so applying it again could only be refused: one store read saved."""
    with log_context(
        run_id=completion.run_id,
        task_id=completion.task_id,
        service=completion.service,
        phase=completion.phase.value,
    ):
        if stored:
            applied = None
            log.debug("completion %s, stored by its worker", completion.status.value)
        else:
            applied = _apply(completion, rt)
        if completion.phase is Phase.BUILD and completion.status is not TaskStatus.SUCCEEDED:
            # Halt on what the task ended as, not on what this message says: a late failure
            # from an attempt whose worker outlived its lease must not halt a run whose
            # build succeeded, or is being done again.
            ended = applied or rt.store.get_task(completion.task_id)
            if ended is None or ended.status in BUILD_FAILED:
                on_build_failed(completion, rt)
        free_ended_deploy(completion, applied, rt)
        advance_soon(completion.run_id, rt)


def _apply(completion: TaskCompletion, rt: Runtime) -> TaskRecord | None:
    applied = rt.store.complete_task(completion)
    if applied is None:
        # Usually the worker applied it already (it writes before it publishes), or it
        # came from an attempt whose task was claimed again since.
        log.debug("completion for %s already applied, or stale", completion.task_id)
    else:
        detail = completion.error or completion.image or completion.url or ""
        log.info("task %s: %s", completion.status.value, detail)
    return applied


def advance_soon(run_id: str, rt: Runtime) -> None:
    """`advance_run`, coalesced within this process (see `Coalescer`)."""
    rt.coalescer.run(run_id, lambda: advance_run(run_id, rt))


def on_build_failed(completion: TaskCompletion, rt: Runtime) -> None:
    """No deploy can follow: stop queued builds, and cancel those in flight if configured."""
    halt_run(completion.run_id, f"build of {completion.service} failed", rt)
