"""`archdeploy rollback [RUN_ID]`: a run that puts back what a release promoted.

The rollback is a run of its own, of revert tasks only: each service the released run
promoted returns to the traffic that served before it (recorded by that run's stage),
dependents first.
"""

from __future__ import annotations

from shared.core.release_plan import plan_rollback
from shared.core.runtime import Runtime
from shared.errors import UsageError
from shared.messages import (
    DeployRequest,
    Phase,
    RunRecord,
    RunStatus,
    TaskRecord,
    TaskStatus,
)
from shared.ports import RunStore


def last_promoted_run(store: RunStore) -> str:
    """The newest release run that promoted something and has not been rolled back since
    (the default to roll back)."""
    undone: set[str] = set()
    for run in store.list_runs(50):  # newest first
        if run.rollback_of and run.status is RunStatus.SUCCEEDED:
            undone.add(run.rollback_of)
        released = run.release is not None and not run.rollback_of and run.run_id not in undone
        if released and run.status is RunStatus.SUCCEEDED and promoted_services(run.run_id, store):
            return run.run_id
    raise UsageError("no promoted release to roll back: name a run, e.g. `rollback r-...`")


def promoted_services(run_id: str, store: RunStore) -> set[str]:
    """The services a release moved traffic to (unchanged ones it left alone are not)."""
    return {
        t.service
        for t in store.get_tasks(run_id, Phase.PROMOTE)
        if t.status is TaskStatus.SUCCEEDED and not t.reused
    }


def plan_rollback_run(
    request: DeployRequest, run_id: str, key: str, rt: Runtime
) -> tuple[RunRecord, list[TaskRecord], str]:
    """The rollback run, its tasks and the released run's architecture text."""
    source_id = request.rollback_of or ""
    source = rt.store.get_run(source_id)
    if source is None:
        raise UsageError(f"no run {source_id!r} here: `archdeploy runs` lists runs")
    if source.rollback_of:
        raise UsageError(
            f"run {source_id} is a rollback (of {source.rollback_of}), not a release: "
            "to serve that release again, run `archdeploy up FILE --release`"
        )
    if source.release is None:
        raise UsageError(
            f"run {source_id!r} is not a release: `archdeploy runs` lists runs; "
            "only runs made with `release:` or `up --release` can be rolled back"
        )
    if not source.status.terminal:
        raise UsageError(f"run {source_id} is still going: wait for it, or cancel it")
    promoted = promoted_services(source_id, rt.store)
    if not promoted:
        raise UsageError(f"run {source_id} promoted nothing: there is nothing to roll back")
    tasks = plan_rollback(run_id, rt.store.get_tasks(source_id, Phase.REVERT), promoted)
    now = rt.clock()
    run = RunRecord(
        run_id=run_id,
        idempotency_key=key,
        phase=Phase.REVERT,
        project_id=source.project_id,
        region=source.region,
        environment=source.environment,
        architecture_file=source.architecture_file,
        source_root=source.source_root,
        dataflows=source.dataflows,
        requested_by=request.requested_by,
        release=source.release,
        rollback_of=source_id,
        created_at=now,
        updated_at=now,
        **(rt.driver.fields() if rt.driver else {}),
    )
    return run, tasks, rt.store.get_architecture(source_id) or ""
