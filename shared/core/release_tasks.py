"""What a worker does for a release task: stage, verify, promote or revert one service.

Each is idempotent, as a task may run twice: staging the same configuration under the
run's tag returns the same revision; verifying only reads; promoting resumes from the
staged revision's current share; reverting sets traffic to what it was before. The
traffic that served before is read before staging and kept on the stage task: it is
where a revert (or a later rollback) returns.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from shared.architecture.model import HttpCheck, VerifyCheck
from shared.core.release_plan import TAG_PREFIX, release_tag, serving_tag, split_traffic
from shared.core.runtime import Runtime
from shared.deployer import ContainerDeployer, Target, Traffic, TrafficDeployer
from shared.errors import ArchdeployError, BackendError, UsageError
from shared.messages import (
    CheckOutcome,
    Phase,
    ReleaseDetail,
    RunRecord,
    TaskMessage,
    TaskStatus,
    task_id_for,
)

log = logging.getLogger(__name__)

Outcome = tuple[TaskStatus, dict[str, Any]]


def run_release_task(message: TaskMessage, target: Target, rt: Runtime) -> Outcome:
    """Do the task; returns its status and outputs. Raises `ArchdeployError` on failure."""
    deployer = traffic_deployer(rt.deployer)
    run = rt.store.get_run(message.run_id)
    if run is None:
        raise UsageError(f"run {message.run_id} is unknown")
    if message.phase is Phase.STAGE:
        return _stage(message, deployer, target, run.run_id)
    source = run.rollback_of or run.run_id
    stage = rt.store.get_task(task_id_for(source, Phase.STAGE, message.service))
    detail = stage.release if stage is not None else None
    if message.phase is Phase.REVERT:
        return _revert(message.service, deployer, target, detail, release_tag(source))
    if detail is None:
        raise BackendError(f"{message.service}: its stage recorded no revision")
    if message.phase is Phase.VERIFY:
        return _verify(message, detail, rt)
    return _promote(message, deployer, target, detail, run, rt)


def traffic_deployer(deployer: object) -> TrafficDeployer:
    if not isinstance(deployer, TrafficDeployer):
        name = type(deployer).__name__
        raise UsageError(
            f"a release needs a deployer with revisions and traffic (TrafficDeployer); "
            f"{name} has none: deploy without `--release` and without `release:` in the file"
        )
    return deployer


def _stage(message: TaskMessage, deployer: TrafficDeployer, target: Target, run_id: str) -> Outcome:
    tag = release_tag(run_id)
    before = deployer.traffic(message.service, target=target)
    # A retry after the first attempt created the service finds it serving our tag alone.
    created = before is None or serving_tag(before.percents, before.tags, tag)
    staged = deployer.stage(
        message.service, message.service_account, message.spec, tag=tag, target=target
    )
    now = deployer.traffic(message.service, target=target)
    detail = ReleaseDetail(
        revision=staged.revision,
        tag=staged.tag,
        tag_url=staged.url,
        created=created or staged.created,
        previous=None if created or before is None else dict(before.percents),
    )
    log.info("%s staged as %s at %s", message.service, staged.revision, staged.url)
    return TaskStatus.SUCCEEDED, {"url": now.url if now else staged.url, "release": detail}


def checks_for(message: TaskMessage) -> list[VerifyCheck]:
    """The service's `verify` checks; by default, its health check."""
    if message.spec.verify:
        return list(message.spec.verify)
    if message.health_check is not None:
        return [VerifyCheck(http=HttpCheck(path=message.health_check.path))]
    return []


def run_checks(message: TaskMessage, url: str, rt: Runtime) -> list[CheckOutcome]:
    """Every check, in order, stopping at the first that fails."""
    checks = checks_for(message)
    if checks and rt.checks is None:
        raise UsageError("this worker has no check runner: release checks cannot run here")
    outcomes: list[CheckOutcome] = []
    for check in checks:
        assert rt.checks is not None
        outcomes.append(rt.checks.run(check, url))
        if not outcomes[-1].passed:
            break
    return outcomes


def _failed(outcomes: list[CheckOutcome]) -> tuple[TaskStatus, str] | None:
    """How a task whose checks gave `outcomes` ends, and why; None if they all passed. A
    check stopped by Ctrl-C (the run is being cancelled) did not fail: it was cancelled."""
    bad = next((o for o in outcomes if not o.passed), None)
    if bad is None:
        return None
    if bad.interrupted:
        return TaskStatus.CANCELLED, f"cancelled: check `{bad.name}` {bad.detail}"
    return TaskStatus.FAILED, f"check `{bad.name}` failed: {bad.detail}"


def _verify(message: TaskMessage, detail: ReleaseDetail, rt: Runtime) -> Outcome:
    outcomes = run_checks(message, detail.tag_url, rt)
    done = detail.model_copy(update={"checks": outcomes})
    failed = _failed(outcomes)
    if failed:
        return failed[0], {"error": failed[1], "release": done}
    return TaskStatus.SUCCEEDED, {"url": detail.tag_url, "release": done}


def _promote(
    message: TaskMessage,
    deployer: TrafficDeployer,
    target: Target,
    detail: ReleaseDetail,
    run: RunRecord,
    rt: Runtime,
) -> Outcome:
    steps = run.release.percents if run.release else [100]
    soak = run.release.soak if run.release else 0.0
    now = deployer.traffic(message.service, target=target)
    current = now.percents.get(detail.revision, 0) if now else 0
    checks: list[CheckOutcome] = []
    claimed = rt.store.get_task(message.task_id)
    attempt = claimed.attempt if claimed else 0
    for percent in steps:
        if percent < current:
            continue  # a retry: this step was taken before
        if checks and not _still_ours(message, attempt, rt):
            # Past a soak the task may have been claimed again (its lease lapsed) or the
            # release stopped and is reverting: a late step must not move traffic.
            return TaskStatus.FAILED, {"error": f"stopped before {percent}%: superseded"}
        after = deployer.set_traffic(
            message.service, split_traffic(detail.previous, detail.revision, percent), target=target
        )
        log.info("%s: %d%% on %s", message.service, percent, detail.revision)
        if percent < 100:
            time.sleep(soak)
            checks = run_checks(message, detail.tag_url, rt)
            failed = _failed(checks)
            if failed:
                stopped = detail.model_copy(update={"checks": checks, "percent": percent})
                error = f"at {percent}%: {failed[1]}"
                return failed[0], {"error": error, "release": stopped}
    _untag_earlier_releases(message.service, deployer, target, after, release_tag(run.run_id))
    done = detail.model_copy(update={"checks": checks or detail.checks, "percent": 100})
    return TaskStatus.SUCCEEDED, {"url": after.url if steps else None, "release": done}


def _untag_earlier_releases(
    service: str, deployer: TrafficDeployer, target: Target, traffic: Traffic, own: str
) -> None:
    """Earlier releases' tags were kept for a look; once a newer release of the service is
    promoted they go, so their URLs stop reaching revisions nobody serves. (Rollback does
    not need them: it names revisions, which outlive their tags.) Best effort."""
    for tag in sorted(traffic.tags):
        if tag.startswith(TAG_PREFIX) and tag != own:
            try:
                deployer.untag(service, tag, target=target)
            except ArchdeployError as exc:
                log.warning("%s: tag %s left in place: %s", service, tag, exc)


def _still_ours(message: TaskMessage, attempt: int, rt: Runtime) -> bool:
    task = rt.store.get_task(message.task_id)
    run = rt.store.get_run(message.run_id)
    if task is None or run is None or run.halted or run.status.terminal:
        return False
    return task.status is TaskStatus.RUNNING and task.attempt == attempt


def _revert(
    service: str,
    deployer: TrafficDeployer,
    target: Target,
    detail: ReleaseDetail | None,
    tag: str,
) -> Outcome:
    now = deployer.traffic(service, target=target)
    if now is None:
        return TaskStatus.SUCCEEDED, {"reused": True}  # nothing there to put back
    if detail is not None and detail.previous:
        if now.percents != detail.previous:
            deployer.set_traffic(service, dict(detail.previous), target=target)
        log.info("%s: traffic back on %s", service, detail.previous)
        return TaskStatus.SUCCEEDED, {"url": now.url, "release": detail}
    created = detail.created if detail is not None else serving_tag(now.percents, now.tags, tag)
    if created:  # nothing served before this release: undoing it is removing the service
        if not isinstance(deployer, ContainerDeployer):
            raise UsageError(f"{service}: this deployer cannot tear a service down")
        deployer.teardown(service)
        log.info("%s: created by the release, torn down", service)
        return TaskStatus.SUCCEEDED, {"release": detail}
    # The stage never recorded what served, and staging moves no traffic: nothing moved.
    return TaskStatus.SUCCEEDED, {"reused": True}
