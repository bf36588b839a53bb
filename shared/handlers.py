"""The three handlers: dispatch a request, run a task, record a completion.

They talk only to the ports in `Runtime`. Each is safe to call again with the same
input (Pub/Sub redelivers): the store's compare-and-set writes decide who acts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from shared.deployer import ContainerDeployer, Target
from shared.errors import ArchdeployError, ArchitectureError, BackendError, UsageError
from shared.logs import log_context
from shared.messages import (
    TOPIC_COMPLETIONS,
    TOPIC_RESULTS,
    TOPIC_TASKS,
    DeployRequest,
    Phase,
    RunFinished,
    RunRecord,
    RunResult,
    RunStatus,
    TaskCompletion,
    TaskMessage,
    TaskRecord,
    TaskStatus,
    utcnow,
)
from shared.plan import plan_run
from shared.ports import MessageBus, RunStore, SourceProvider
from shared.state import all_succeeded, all_terminal, assemble_result, next_deploys, outcome
from shared.validation import LoadedArchitecture, load_architecture, parse_architecture

log = logging.getLogger(__name__)

DEFAULT_LEASES = {Phase.BUILD: 1800.0, Phase.DIRECTOR: 900.0, Phase.DEPLOY: 900.0}


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Runtime:
    """The ports and knobs the handlers use; `shared.bootstrap` builds one from settings."""

    store: RunStore
    bus: MessageBus
    deployer: ContainerDeployer | None = None
    worker_id: str = field(default_factory=_default_worker_id)
    leases: Mapping[Phase, float] = field(default_factory=lambda: dict(DEFAULT_LEASES))
    clock: Callable[[], datetime] = utcnow
    fetch_architecture: Callable[[str], LoadedArchitecture] | None = None
    sources: SourceProvider | None = None  # fetches remote build sources for the worker
    # Submit builds and let their completion arrive as a build event: a build can
    # outlast a function's 540 s timeout, so the worker must not be what waits for it.
    async_builds: bool = False


def run_view(store: RunStore, run_id: str) -> RunResult | None:
    """The final result if the run has ended, else a view assembled from its tasks."""
    final = store.get_result(run_id)
    if final is not None:
        return final
    run = store.get_run(run_id)
    return assemble_result(run, store.get_tasks(run_id)) if run else None


# --- dispatcher ---------------------------------------------------------------------------


def run_id_for(idempotency_key: str) -> str:
    """Deterministic, so the same request always names the same run."""
    return "r-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]


def load_request(request: DeployRequest, rt: Runtime) -> LoadedArchitecture:
    """The request's architecture, validated. Raises `ArchitectureError` or `UsageError`."""
    base = (
        Path(request.source_root)
        if request.source_root and "://" not in request.source_root
        else None
    )
    if request.architecture is not None:
        return parse_architecture(
            request.architecture, base_dir=base, environment=request.environment
        )
    uri = request.architecture_uri or ""
    if "://" in uri:
        if rt.fetch_architecture is None:
            raise UsageError(
                f"cannot read {uri!r} here: only local files are supported in this mode"
            )
        return rt.fetch_architecture(uri)
    return load_architecture(uri, environment=request.environment)


def dispatch_request(
    request: DeployRequest,
    rt: Runtime,
    *,
    message_id: str | None = None,
    record_invalid: bool = True,
) -> RunRecord:
    """Create the run (once per idempotency key) and publish its build tasks.

    An invalid request becomes a failed run record naming the problems (when
    `record_invalid`), so a Pub/Sub caller can see why; otherwise the error is raised.
    """
    key = request.idempotency_key or message_id or uuid.uuid4().hex
    run_id = run_id_for(key)
    with log_context(run_id=run_id):
        existing = rt.store.get_run(run_id)
        if existing is not None:
            log.warning("request %s seen before: run %s exists, not created again", key, run_id)
            _republish_pending(existing, rt)
            return existing
        try:
            loaded = load_request(request, rt)
            source_root = request.source_root or (str(loaded.base_dir) if loaded.base_dir else "")
            plan = plan_run(
                loaded.architecture,
                run_id=run_id,
                dataflows=request.dataflows,
                director_url=request.director_url,
                source_root=source_root,
                now=rt.clock(),
                build_only=request.build_only,
                images=request.images,
                service_accounts=request.service_accounts,
            )
        except (ArchitectureError, UsageError) as exc:
            if not record_invalid:
                raise
            return _record_invalid(run_id, key, request, exc, rt)
        arch = loaded.architecture
        run = RunRecord(
            run_id=run_id,
            idempotency_key=key,
            project_id=arch.project_id,
            region=arch.region,
            environment=request.environment or arch.name,
            architecture_file=loaded.file,
            source_root=source_root,
            dataflows=plan.dataflows,
            director_url=request.director_url,
            requested_by=request.requested_by,
            supersede_key=request.supersede_key,
            created_at=rt.clock(),
            updated_at=rt.clock(),
        )
        run, created = rt.store.create_run(run, plan.tasks, loaded.text)
        if created:
            log.info("run created: %d tasks over dataflows %s", len(plan.tasks), plan.dataflows)
        _republish_pending(run, rt)
        if not any(t.status is TaskStatus.PENDING for t in plan.tasks):
            advance_run(run_id, rt)  # nothing to build: the next phase opens at once
        return rt.store.get_run(run_id) or run


def _record_invalid(
    run_id: str, key: str, request: DeployRequest, exc: ArchdeployError, rt: Runtime
) -> RunRecord:
    now = rt.clock()
    run = RunRecord(
        run_id=run_id,
        idempotency_key=key,
        status=RunStatus.RUNNING,
        architecture_file=request.architecture_uri or "<inline>",
        requested_by=request.requested_by,
        error=str(exc),
        created_at=now,
        updated_at=now,
    )
    run, created = rt.store.create_run(run, [], request.architecture or "")
    if created:
        log.warning("request refused: %s", exc)
        _finish(run, [], RunStatus.FAILED, rt)
    return rt.store.get_run(run_id) or run


def _republish_pending(run: RunRecord, rt: Runtime) -> None:
    """Publish every released task not yet claimed: after a crash between creating the
    run and publishing, a redelivered request finishes the job; duplicates are harmless."""
    if run.status.terminal:
        return
    pending = [
        t for t in rt.store.get_tasks(run.run_id, run.phase) if t.status is TaskStatus.PENDING
    ]
    _publish_tasks(run, pending, rt)


def _publish_tasks(run: RunRecord, tasks: list[TaskRecord], rt: Runtime) -> None:
    if not tasks:
        return
    messages = [(_task_message(run, t), _attributes(t)) for t in tasks]
    rt.bus.publish_many(TOPIC_TASKS, messages)


def _task_message(run: RunRecord, task: TaskRecord) -> TaskMessage:
    assert task.spec is not None
    return TaskMessage(
        run_id=run.run_id,
        task_id=task.task_id,
        phase=task.phase,
        service=task.service,
        dataflow=task.dataflow,
        service_account=task.service_account,
        spec=task.spec,
        project_id=run.project_id,
        region=task.spec.region or run.region,
        health_check=task.health_check,
    )


def _attributes(task: TaskRecord | TaskCompletion) -> dict[str, str]:
    return {
        "run_id": task.run_id,
        "task_id": task.task_id,
        "phase": task.phase.value,
        "service": task.service,
    }


# --- worker -------------------------------------------------------------------------------


def run_task(message: TaskMessage, rt: Runtime) -> TaskCompletion | None:
    """Claim the task and do it: build an image or deploy a service. Publishes the outcome
    as a completion; returns it, or None when the task was not ours to run (a duplicate)."""
    with log_context(
        run_id=message.run_id,
        task_id=message.task_id,
        service=message.service,
        phase=message.phase.value,
    ):
        now = rt.clock()
        claimed = rt.store.claim_task(
            message.task_id, worker=rt.worker_id, lease_seconds=rt.leases[message.phase], now=now
        )
        if claimed is None:
            log.warning("task not claimed (duplicate delivery, or already done): ignored")
            return None
        run = rt.store.get_run(message.run_id)
        if run is None or run.status.terminal or run.halted:
            why = (run.halted if run else None) or "the run has ended"
            completion = _completion(
                message, claimed, TaskStatus.SKIPPED, now, error=f"not started: {why}"
            )
        elif message.phase is Phase.BUILD and rt.async_builds:
            _submit_build(message, claimed, rt)
            return None
        else:
            completion = _execute(message, claimed, rt, now)
        rt.bus.publish(TOPIC_COMPLETIONS, completion, attributes=_attributes(completion))
        return completion


def _submit_build(message: TaskMessage, claimed: TaskRecord, rt: Runtime) -> None:
    """Start the build and return; its completion arrives from the build event stream."""
    if claimed.build_id:
        log.warning("build %s was submitted before: not submitting again", claimed.build_id)
        return
    submit = getattr(rt.deployer, "submit_build", None)
    if submit is None:
        raise UsageError("async builds need a deployer with submit_build (the gcp deployer)")
    target = _target(message)
    try:
        spec = rt.sources.localize(message.spec) if rt.sources else message.spec
        build_id = submit(message.service, spec, target=target)
    except ArchdeployError as exc:
        if isinstance(exc, BackendError) and exc.retryable:
            raise  # let the bus redeliver; the claim's lease lets a retry reclaim it
        done = _completion(message, claimed, TaskStatus.FAILED, rt.clock(), error=str(exc))
        rt.bus.publish(TOPIC_COMPLETIONS, done, attributes=_attributes(done))
        return
    rt.store.record_build_id(message.task_id, build_id)
    log.info("build %s submitted", build_id)


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
    target = _target(message)
    log.info("%s started (attempt %d)", message.phase.value, claimed.attempt)
    try:
        if message.phase is Phase.BUILD:
            spec = rt.sources.localize(message.spec) if rt.sources else message.spec
            image = rt.deployer.build(message.service, spec, target=target)
            done = _completion(message, claimed, TaskStatus.SUCCEEDED, started, image=image)
        else:
            url = rt.deployer.deploy_service(
                message.service, message.service_account, message.spec, target=target
            )
            done = _completion(message, claimed, TaskStatus.SUCCEEDED, started, url=url)
    except ArchdeployError as exc:
        log.info("%s failed: %s", message.phase.value, exc)
        return _completion(message, claimed, TaskStatus.FAILED, started, error=str(exc))
    except Exception as exc:  # a deployer bug must fail this task, not hang the run
        log.error("%s failed unexpectedly", message.phase.value, exc_info=True)
        return _completion(
            message, claimed, TaskStatus.FAILED, started, error=f"{type(exc).__name__}: {exc}"
        )
    log.info("%s succeeded", message.phase.value)
    return done


def _completion(
    message: TaskMessage, claimed: TaskRecord, status: TaskStatus, started: datetime, **outputs: str
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


# --- aggregator ---------------------------------------------------------------------------


def record_completion(completion: TaskCompletion, rt: Runtime) -> None:
    """Apply a completion once, then move the run on if its phase is done."""
    with log_context(
        run_id=completion.run_id,
        task_id=completion.task_id,
        service=completion.service,
        phase=completion.phase.value,
    ):
        applied = rt.store.complete_task(completion)
        if applied is None:
            log.warning(
                "completion for %s seen before (or unknown task): ignored", completion.task_id
            )
        else:
            log.info(
                "task %s: %s",
                completion.status.value,
                completion.error or completion.image or completion.url or "",
            )
            if completion.phase is Phase.BUILD and completion.status is not TaskStatus.SUCCEEDED:
                _halt(completion.run_id, f"build of {completion.service} failed", rt)
        advance_run(completion.run_id, rt)


def _halt(run_id: str, reason: str, rt: Runtime) -> None:
    rt.store.update_run(run_id, expect={"halted": None}, changes={"halted": reason})


def advance_run(run_id: str, rt: Runtime) -> None:
    """The state machine's step: open the next phase, release ready tasks, or finish.

    Every transition is a compare-and-set, so concurrent aggregators act once between them.
    """
    run = rt.store.get_run(run_id)
    if run is None or run.status.terminal:
        return
    if run.phase is Phase.BUILD:
        _after_builds(run, rt)
    elif run.phase is Phase.DIRECTOR:
        _after_director(run, rt)
    else:
        _step_deploys(run, rt)


def _after_builds(run: RunRecord, rt: Runtime) -> None:
    counts = rt.store.count_tasks(run.run_id, Phase.BUILD)
    if not all_terminal(counts):
        return
    if not all_succeeded(counts):
        _finish(run, rt.store.get_tasks(run.run_id), None, rt)
        return
    has_director = any(rt.store.count_tasks(run.run_id, Phase.DIRECTOR).values())
    next_phase = Phase.DIRECTOR if has_director else Phase.DEPLOY
    moved = rt.store.update_run(
        run.run_id,
        expect={"phase": Phase.BUILD, "status": RunStatus.RUNNING},
        changes={"phase": next_phase, "updated_at": rt.clock()},
    )
    if moved is None:
        return
    log.info("all builds succeeded: phase %s opens", next_phase.value)
    if has_director:
        director = rt.store.get_tasks(run.run_id, Phase.DIRECTOR)
        _release(moved, director, rt)
    else:
        _step_deploys(moved, rt)


def _after_director(run: RunRecord, rt: Runtime) -> None:
    (director,) = rt.store.get_tasks(run.run_id, Phase.DIRECTOR)
    if not director.status.terminal:
        return
    if director.status is not TaskStatus.SUCCEEDED:
        _finish(run, rt.store.get_tasks(run.run_id), None, rt)
        return
    moved = rt.store.update_run(
        run.run_id,
        expect={"phase": Phase.DIRECTOR, "status": RunStatus.RUNNING},
        changes={"phase": Phase.DEPLOY, "director_url": director.url, "updated_at": rt.clock()},
    )
    if moved is not None:
        log.info("director deployed at %s: phase deploy opens", director.url)
        _step_deploys(moved, rt)


def _step_deploys(run: RunRecord, rt: Runtime) -> None:
    tasks = rt.store.get_tasks(run.run_id, Phase.DEPLOY)
    step = next_deploys(tasks)
    for task, reason in step.skip:
        rt.store.complete_task(
            TaskCompletion(
                run_id=run.run_id,
                task_id=task.task_id,
                phase=task.phase,
                service=task.service,
                status=TaskStatus.SKIPPED,
                error=reason,
                attempt=0,
            )
        )
    _release(run, step.release, rt)
    if step.finished:
        _finish(run, rt.store.get_tasks(run.run_id), None, rt)


def _release(run: RunRecord, tasks: list[TaskRecord], rt: Runtime) -> None:
    """Move waiting tasks to pending with the run's outputs filled in, and publish them."""
    released: list[TaskRecord] = []
    for task in tasks:
        updates = _spec_updates(run, task, rt)
        won = rt.store.release_task(task.task_id, spec_updates=updates, now=rt.clock())
        if won is not None:
            released.append(won)
    _publish_tasks(run, released, rt)


def _spec_updates(run: RunRecord, task: TaskRecord, rt: Runtime) -> dict[str, object]:
    assert task.spec is not None
    build = rt.store.get_task(f"{run.run_id}:{Phase.BUILD.value}:{task.service}")
    env = dict(task.spec.environment_vars)
    if task.phase is Phase.DEPLOY:
        env["SERVICE_DIRECTOR_URL"] = run.director_url or ""
    return {
        "image": build.image if build and build.image else task.spec.image,
        "environment_vars": env,
    }


def _finish(run: RunRecord, tasks: list[TaskRecord], status: RunStatus | None, rt: Runtime) -> None:
    now = rt.clock()
    status = status or (RunStatus.FAILED if run.error else outcome(tasks))
    final = run.model_copy(update={"status": status, "finished_at": now, "updated_at": now})
    result = assemble_result(final, tasks, status)
    if rt.store.finish_run(run.run_id, result):
        log.info(
            "run finished: %s (%d images, %d urls, %d errors)",
            status.value,
            len(result.images),
            len(result.urls),
            len(result.errors),
        )
        rt.bus.publish(
            TOPIC_RESULTS,
            RunFinished(run_id=run.run_id, status=status, result=result),
            attributes={"run_id": run.run_id, "status": status.value},
        )
