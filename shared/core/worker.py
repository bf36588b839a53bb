"""The worker: claims one task and builds or deploys that one service.

The claim is a compare-and-set with a lease, so a duplicate delivery starts nothing and
a crashed worker's task can be reclaimed once its lease has run out. The worker writes
its outcome to the store before publishing it, so a completion message that is lost
costs nothing: the sweep (or the next completion) moves the run on from the store.
A worker that outlived its lease, its task claimed again, has its outcome refused.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from shared.core.handoff import hand_off
from shared.core.publishing import STORED, attributes
from shared.core.release_tasks import run_release_task
from shared.core.run_engine import halt_run
from shared.core.runtime import Runtime
from shared.deployer import (
    Deployed,
    IncrementalDeployer,
    Target,
    config_fingerprint,
    is_incremental,
    moves_traffic,
    submits_builds,
    targeting,
)
from shared.errors import ArchdeployError, BackendError, UsageError
from shared.logs import log_context
from shared.messages import (
    RELEASE_PHASES,
    TOPIC_COMPLETIONS,
    Phase,
    RunRecord,
    TaskCompletion,
    TaskMessage,
    TaskRecord,
    TaskStatus,
    task_id_for,
    utcnow,
)

log = logging.getLogger(__name__)


def run_task(message: TaskMessage, rt: Runtime) -> TaskCompletion | None:
    """Claim the task and do it. Returns its completion, or None when the task was not
    ours to run (a duplicate) or its outcome will arrive as a build event."""
    with log_context(
        run_id=message.run_id,
        task_id=message.task_id,
        service=message.service,
        phase=message.phase.value,
    ):
        now = rt.clock()
        claimed = rt.store.claim_task(
            message.task_id,
            worker=rt.worker_id,
            lease_seconds=rt.policy.leases[message.phase],
            now=now,
        )
        if claimed is None:
            log.warning("task not claimed (duplicate delivery, or already done): ignored")
            return None
        run = rt.store.get_run(message.run_id)
        stop = _why_not_start(run, message.phase)
        if stop is not None:
            status, why = stop
            completion = _completion(message, claimed, status, now, error=f"not started: {why}")
        else:
            with rt.waiting():
                done = _do(message, claimed, rt, now)
            if done is None:
                return None
            completion = done
        report(completion, rt)
        return completion


def _do(
    message: TaskMessage, claimed: TaskRecord, rt: Runtime, now: datetime
) -> TaskCompletion | None:
    """Reuse, submit or run the task: what waits on the deployer and the sources."""
    if (reused := _reusable(message, rt)) is not None:
        return _completion(message, claimed, TaskStatus.SUCCEEDED, now, **reused)
    if message.phase is Phase.BUILD and rt.policy.async_builds:
        return _submit_build(message, claimed, rt)
    with targeting(_target(message)):
        return _execute(message, claimed, rt, now)


def report(completion: TaskCompletion, rt: Runtime) -> None:
    """Store the outcome, then announce it; the aggregator moves the run on.

    A failed build halts the run here, before the completion travels: builds still queued
    behind it must not start in the time the aggregator takes to hear of it. (Halting is
    a compare-and-set, so the aggregator's own halt on the same completion is a no-op.)"""
    applied = rt.store.complete_task(completion)
    if applied is None:
        log.warning(
            "outcome of attempt %d not recorded: the task ended, or was claimed again, meanwhile",
            completion.attempt,
        )
    elif completion.phase is Phase.BUILD and completion.status is TaskStatus.FAILED:
        halt_run(completion.run_id, f"build of {completion.service} failed", rt)
    else:
        hand_off(completion, rt)  # the slot it freed, before the completion travels
    sent = attributes(completion) | {STORED: "1"}
    rt.bus.publish(TOPIC_COMPLETIONS, completion, attributes=sent)


def _why_not_start(run: RunRecord | None, phase: Phase) -> tuple[TaskStatus, str] | None:
    if run is None:
        return TaskStatus.SKIPPED, "the run is unknown"
    if phase is Phase.REVERT and not run.status.terminal:
        return None  # putting traffic back is what a stopped release still must do
    if run.cancelled_by:
        return TaskStatus.CANCELLED, run.halted or f"cancelled by {run.cancelled_by}"
    if run.status.terminal:
        return TaskStatus.SKIPPED, "the run has ended"
    if run.halted:
        return TaskStatus.SKIPPED, run.halted
    return None


def _reusable(message: TaskMessage, rt: Runtime) -> dict[str, Any] | None:
    """An image built from exactly this input, or a deploy that would change nothing:
    repeated runs of an unchanged architecture build and deploy nothing.

    Looking is never what fails a task: an error here (a source that cannot be fetched,
    a backend that does not answer) is a miss, and the build or deploy that follows
    meets it again and reports it on the task."""
    if message.no_cache or not is_incremental(rt.deployer):
        return None
    try:
        return _reused(message, rt.deployer, rt)
    except ArchdeployError as exc:
        log.info("%s: nothing to reuse (%s)", message.service, exc)
        return None


def _reused(
    message: TaskMessage, deployer: IncrementalDeployer, rt: Runtime
) -> dict[str, Any] | None:
    target = _target(message)
    if message.phase is Phase.BUILD:
        spec = rt.sources.localize(message.spec) if rt.sources else message.spec
        image = deployer.cached_image(message.service, spec, target=target)
        return {"image": image, "reused": True} if image else None
    if message.phase not in (Phase.DIRECTOR, Phase.DEPLOY, Phase.STAGE):
        return None
    current = deployer.deployed(message.service, target=target)
    wanted = config_fingerprint(message.service_account, message.spec, message.health_check)
    if current is None or current.fingerprint != wanted:
        return None
    released = message.phase is not Phase.DIRECTOR
    if released and not _serves_whole(message.service, current, rt, target):
        log.info("%s: traffic is split (a release left halfway): deployed again", message.service)
        return None
    log.info("%s unchanged: not redeployed", message.service)
    return {"url": current.url, "reused": True}


def _serves_whole(service: str, current: Deployed, rt: Runtime, target: Target) -> bool:
    """Whether `current` takes all the service's traffic: a release killed halfway leaves
    a split whose newer revision has the wanted fingerprint, yet is no finished release."""
    if not moves_traffic(rt.deployer):
        return True
    traffic = rt.deployer.traffic(service, target=target)
    if traffic is None:
        return False
    serving = [revision.rsplit("/", 1)[-1] for revision, pct in traffic.percents.items() if pct]
    return serving == [current.revision.rsplit("/", 1)[-1]]


def _submit_build(message: TaskMessage, claimed: TaskRecord, rt: Runtime) -> TaskCompletion | None:
    """Start the build and return; its completion arrives from the build event stream."""
    if claimed.build_id:
        log.warning("build %s was submitted before: not submitting again", claimed.build_id)
        return None
    builds = rt.deployer
    if not submits_builds(builds):
        raise UsageError("async builds need a deployer that submits builds (the gcp deployer)")
    try:
        spec = rt.sources.localize(message.spec) if rt.sources else message.spec
        build_id = builds.submit_build(message.service, spec, target=_target(message))
    except ArchdeployError as exc:
        if isinstance(exc, BackendError) and exc.retryable:
            raise  # redelivered; the lease lets the retry reclaim the task
        return _completion(message, claimed, TaskStatus.FAILED, rt.clock(), error=str(exc))
    rt.store.record_build_id(message.task_id, build_id)
    log.info("build %s submitted", build_id)
    return None


def _target(message: TaskMessage) -> Target:
    return Target(
        project_id=message.project_id,
        region=message.region,
        labels=message.labels,
        run_id=message.run_id,
        task_id=message.task_id,
        health_check=message.health_check,
    )


def _execute(
    message: TaskMessage, claimed: TaskRecord, rt: Runtime, started: datetime
) -> TaskCompletion:
    if rt.deployer is None:
        raise UsageError("this runtime has no container deployer: only workers run tasks")
    log.info("%s started (attempt %d)", message.phase.value, claimed.attempt)
    # Noted before deploying, and kept even if the deploy fails: a failed rollout may
    # already have replaced what served, and a rollback must know where to return.
    deploying = message.phase in (Phase.DIRECTOR, Phase.DEPLOY)
    kept = {"previous": previous} if deploying and (previous := _serving(message, rt)) else {}
    try:
        if message.phase is Phase.BUILD:
            spec = rt.sources.localize(message.spec) if rt.sources else message.spec
            image = rt.deployer.build(message.service, spec)
            done = _completion(message, claimed, TaskStatus.SUCCEEDED, started, image=image)
        elif message.phase is Phase.ROLLBACK:
            done = _roll_back(message, claimed, rt, started)
        elif message.phase in RELEASE_PHASES:
            status, outputs = run_release_task(message, _target(message), rt)
            done = _completion(message, claimed, status, started, **outputs)
        else:
            url = rt.deployer.deploy_service(message.service, message.service_account, message.spec)
            done = _completion(message, claimed, TaskStatus.SUCCEEDED, started, url=url, **kept)
    except ArchdeployError as exc:  # the adapters have retried what was transient
        log.info("%s failed: %s", message.phase.value, exc)
        return _completion(message, claimed, TaskStatus.FAILED, started, error=str(exc), **kept)
    except Exception as exc:  # any deployer's failure fails this task, never the run
        error = f"{type(exc).__name__}: {exc}"
        if _ours(rt.deployer):  # our adapters raise BackendError: anything else is our bug
            log.error("%s failed unexpectedly", message.phase.value, exc_info=True)
        else:  # the seed's contract: a user's deployer fails a service by raising
            log.warning("%s failed: %s", message.phase.value, error)
        return _completion(message, claimed, TaskStatus.FAILED, started, error=error, **kept)
    log.info("%s succeeded", message.phase.value)
    return done


def _ours(deployer: object) -> bool:
    return type(deployer).__module__.split(".")[0] == "shared"


def _serving(message: TaskMessage, rt: Runtime) -> str | None:
    """What serves the service before this deploy replaces it: where a rollback returns."""
    if not is_incremental(rt.deployer):
        return None
    current = rt.deployer.deployed(message.service, target=_target(message))
    return current.revision if current else None


def _roll_back(
    message: TaskMessage, claimed: TaskRecord, rt: Runtime, started: datetime
) -> TaskCompletion:
    deploy = rt.store.get_task(task_id_for(message.run_id, Phase.DEPLOY, message.service))
    director = rt.store.get_task(task_id_for(message.run_id, Phase.DIRECTOR, message.service))
    replaced = deploy or director
    previous = replaced.previous if replaced else None
    if not previous or not is_incremental(rt.deployer):
        error = "nothing to roll back to"
        return _completion(message, claimed, TaskStatus.SKIPPED, started, error=error)
    url = rt.deployer.rollback(message.service, previous, target=_target(message))
    log.info("%s rolled back to %s", message.service, previous)
    return _completion(message, claimed, TaskStatus.SUCCEEDED, started, url=url, previous=previous)


def _completion(
    message: TaskMessage, claimed: TaskRecord, status: TaskStatus, started: datetime, **outputs: Any
) -> TaskCompletion:
    return TaskCompletion(
        run_id=message.run_id,
        task_id=message.task_id,
        phase=message.phase,
        service=message.service,
        attempt=claimed.attempt,
        status=status,
        started_at=started,
        finished_at=utcnow(),
        worker=claimed.claimed_by,
        **outputs,
    )
