"""A freed deploy slot handed over where it is freed: by the worker whose deploy ended.

Under `deploy_concurrency`, a deploy that ends frees a slot for the next ready deploy.
Left to the aggregator, that slot waits for the completion to travel and for the run's
step (serialised per run) before anything is released; the worker that stored the
outcome can release the next one at once. So, right after storing a successful deploy
and before announcing it, the worker admits the ready deploys that fit
(`run_engine.admit_deploys`). It moves no run to another phase: the aggregator's step
still does that, and skips, halts and the run's end; it also still admits, finding the
room taken when the worker was first.

Only where the aggregator runs on the same runtime (`rt.in_process`: `embedded`).
Deploys become ready as their dependencies end, so two admitters that each counted the
room before the other released could fill it twice; in one process both count, read and
release under the run's lock (`rt.admission`). Builds are left to the aggregator: its
build step reads only the free slots' worth of waiting builds (~0.3 ms) and handing
builds over measured no gain (docs/performance.md, "Issue 19: the slot hand-off").
"""

from __future__ import annotations

import logging

from shared.core.run_engine import admit_deploys
from shared.core.runtime import Runtime
from shared.messages import Phase, TaskCompletion, TaskStatus

log = logging.getLogger(__name__)


def hand_off(completion: TaskCompletion, rt: Runtime) -> None:
    """Admit what the slot `completion` freed lets start. Never fails the caller: the
    aggregator admits the same deploys from the completion when this could not."""
    if not hands_off(completion, rt):
        return
    try:
        run = rt.store.get_run(completion.run_id)
        if run is None or run.halted or run.status.terminal or run.phase is not Phase.DEPLOY:
            return
        admit_deploys(run, rt)
    except Exception:  # an optimisation: whatever fails, the completion must still go out
        log.warning("could not hand the slot over: the aggregator will", exc_info=True)


def hands_off(completion: TaskCompletion, rt: Runtime) -> bool:
    """Whether the worker that stored `completion` admits the next deploys itself."""
    return (
        rt.in_process
        and completion.phase is Phase.DEPLOY
        and completion.status is TaskStatus.SUCCEEDED  # else skips: the aggregator's step
        and rt.policy.deploy_concurrency is not None
        # Nothing waits (the cap held nothing back, or no longer does): no read at all.
        and completion.run_id not in rt.admission.deploys_released
    )
