"""The dispatcher: a DeployRequest becomes a run (once per idempotency key) and its first
tasks; a newer request for the same target supersedes older runs still going."""

from __future__ import annotations

import hashlib
import logging
import posixpath
import uuid
from dataclasses import replace
from pathlib import Path

from shared.architecture.cloud_run_limits import MAX_RELEASED_NAME, release_name_problem
from shared.architecture.loading import LoadedArchitecture, load_architecture, parse_architecture
from shared.architecture.model import Architecture, ReleaseSpec
from shared.core.control import cancel_run
from shared.core.dependency_urls import earlier_urls, outside_dependencies
from shared.core.plan import plan_run, select_dataflows
from shared.core.priority import prioritise
from shared.core.publishing import publish_tasks
from shared.core.release_tasks import traffic_deployer
from shared.core.rollback import plan_rollback_run
from shared.core.run_engine import advance_run, finish_run
from shared.core.runtime import Runtime
from shared.errors import ArchdeployError, ArchitectureError, UsageError
from shared.locations import is_remote, parse_github_file
from shared.logs import log_context
from shared.messages import DeployRequest, RunRecord, RunStatus, TaskRecord, TaskStatus

log = logging.getLogger(__name__)


def run_id_for(idempotency_key: str) -> str:
    """Deterministic, so the same request always names the same run."""
    return "r-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]


def load_request(request: DeployRequest, rt: Runtime) -> LoadedArchitecture:
    """The request's architecture, validated. Raises `ArchitectureError` or `UsageError`."""
    root = request.source_root
    base = Path(root) if root and not is_remote(root) else None
    if request.architecture is not None:
        return parse_architecture(
            request.architecture, base_dir=base, environment=request.environment
        )
    uri = request.architecture_uri or ""
    if is_remote(uri):
        if rt.architectures is None:
            raise UsageError(f"cannot read {uri!r} here: only local files are supported")
        return rt.architectures.read(uri)
    return load_architecture(uri, environment=request.environment)


def dispatch_request(
    request: DeployRequest,
    rt: Runtime,
    *,
    message_id: str | None = None,
    record_invalid: bool = True,
) -> RunRecord:
    """Create the run (once per idempotency key) and release its first tasks.

    An invalid request becomes a failed run record naming the problems (when
    `record_invalid`), so a Pub/Sub caller can see why; otherwise the error is raised.
    """
    key = request.idempotency_key or message_id or uuid.uuid4().hex
    run_id = run_id_for(key)
    with log_context(run_id=run_id):
        existing = rt.store.get_run(run_id)
        if existing is not None:
            log.warning("request %s seen before: run %s exists, not created again", key, run_id)
            _resume(existing, rt)
            return rt.store.get_run(run_id) or existing
        try:
            if request.rollback_of:
                run, tasks, text = plan_rollback_run(request, run_id, key, rt)
            else:
                loaded = load_request(request, rt)
                run, tasks = _plan(request, loaded, run_id, key, rt)
                text = loaded.text
        except (ArchitectureError, UsageError) as exc:
            if not record_invalid:
                raise
            return _record_invalid(run_id, key, request, exc, rt)
        run, created = rt.store.create_run(run, tasks, text)
        if created:
            log.info("run created: %d tasks over dataflows %s", len(tasks), run.dataflows)
            _supersede(run, rt)
            run = rt.store.get_run(run_id) or run  # it may have been superseded at once
        _resume(run, rt, created=created)
        return rt.store.get_run(run_id) or run


def _plan(
    request: DeployRequest, loaded: LoadedArchitecture, run_id: str, key: str, rt: Runtime
) -> tuple[RunRecord, list[TaskRecord]]:
    source_root = request.source_root or _default_source_root(request, loaded)
    arch = loaded.architecture
    release = release_policy(arch, request, rt)
    plan = plan_run(
        arch,
        run_id=run_id,
        dataflows=request.dataflows,
        director_url=request.director_url,
        source_root=source_root,
        now=rt.clock(),
        build_only=request.build_only,
        rollback=request.rollback_on_failure,
        images=request.images,
        service_accounts=request.service_accounts,
        known_urls=_known_urls(arch, request, rt),
        release=release is not None,
    )
    # Priorities once, here: admission under a cap then only sorts by the stored rank.
    tasks = prioritise(plan.tasks, rt.store.get_durations(arch.project_id))
    for service, notes in plan.notes.items():
        for note in notes:
            log.warning("%s: %s", service, note)
    now = rt.clock()
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
        supersede_order=request.supersede_order,
        no_cache=request.no_cache,
        rollback_on_failure=request.rollback_on_failure,
        release=release,
        created_at=now,
        updated_at=now,
        **(rt.driver.fields() if rt.driver else {}),
    )
    return run, tasks


def release_policy(arch: Architecture, request: DeployRequest, rt: Runtime) -> ReleaseSpec | None:
    """How the run releases (the file's `release:`, or all at once for `--release`), or
    None for plain deploys. A release needs a deployer with traffic: refused otherwise."""
    if request.build_only or not (request.release or arch.release):
        return None
    if rt.deployer is not None:
        traffic_deployer(rt.deployer)  # raises a UsageError naming what is missing
    too_long = [
        problem
        for flow in arch.dataflows.values()
        for spec in flow.services.values()
        if spec.deployment is not None and (problem := release_name_problem(spec.name))
    ]
    if too_long:  # the file's `release:` is checked at validation; `--release` here
        fix = f"shorten them to at most {MAX_RELEASED_NAME} characters, or deploy without it"
        raise UsageError(f"cannot release: {'; '.join(too_long)}. {fix}")
    return arch.release or ReleaseSpec()


def _known_urls(arch: Architecture, request: DeployRequest, rt: Runtime) -> dict[str, str]:
    """URLs earlier runs (same project and region) recorded for dependencies this run does
    not deploy; no store read when every dependency is deployed in the run."""
    if request.build_only:
        return {}
    wanted = outside_dependencies(arch, select_dataflows(arch, request.dataflows))
    if not wanted:
        return {}
    runs = [
        r
        for r in rt.store.list_runs(_EARLIER_RUNS)
        if r.status.terminal and (r.project_id, r.region) == (arch.project_id, arch.region)
    ]
    results = (result.urls for r in runs if (result := rt.store.get_result(r.run_id)))
    return earlier_urls(wanted, results)


_EARLIER_RUNS = 20


def _resume(run: RunRecord, rt: Runtime, *, created: bool = False) -> None:
    """Publish released tasks nobody has claimed, then let the state machine admit more.

    After a crash between creating the run and publishing, a redelivered request
    finishes the job; the duplicates it may send are harmless (claims are CAS). A run
    this call `created` has released nothing yet (whoever releases one of its tasks
    meanwhile publishes it too): no read of its tasks, ~30 ms at 1,000 services."""
    if run.status.terminal:
        return
    if not created:
        pending = [
            t for t in rt.store.get_tasks(run.run_id, run.phase) if t.status is TaskStatus.PENDING
        ]
        publish_tasks(run, pending, rt)
    advance_run(run.run_id, rt)


def _supersede(run: RunRecord, rt: Runtime) -> None:
    """Cancel older runs for the same target, so two pushes never race to deploy.

    With `supersede_order` (a push's time), a run for an older push than one already
    seen for the target is cancelled itself instead: it must not replace newer code."""
    if not run.supersede_key:
        return
    seen = {r.run_id: r for r in [*rt.store.list_runs(50), *rt.store.list_active_runs()]}
    same = [r for r in seen.values() if r.supersede_key == run.supersede_key]
    newer = [r for r in same if r.run_id != run.run_id and _pushed_later(r, run)]
    if newer:
        log.warning("run %s is for an older push than %s: cancelled", run.run_id, newer[0].run_id)
        cancel_run(run.run_id, rt, by=f"superseded by {newer[0].run_id} (a newer push)")
        return
    for older in same:
        if older.run_id != run.run_id and not older.status.terminal:
            ordered = older.supersede_order is not None and run.supersede_order is not None
            if ordered or older.created_at <= run.created_at:
                log.info("run %s supersedes %s", run.run_id, older.run_id)
                cancel_run(older.run_id, rt, by=f"superseded by {run.run_id}")


def _pushed_later(other: RunRecord, run: RunRecord) -> bool:
    if other.supersede_order is None or run.supersede_order is None:
        return False
    return other.supersede_order > run.supersede_order


def _default_source_root(request: DeployRequest, loaded: LoadedArchitecture) -> str:
    """Relative source paths resolve beside the file: its directory, or for the file
    `github://OWNER/REPO/DIR/FILE@REF` the tree `github://OWNER/REPO@REF/DIR`."""
    if loaded.base_dir is not None:
        return str(loaded.base_dir)
    uri = request.architecture_uri or ""
    try:
        file = parse_github_file(uri)
    except ValueError:
        return ""
    return replace(file, path=posixpath.dirname(file.path)).tree_uri()


def record_refused(key: str, exc: ArchdeployError, rt: Runtime) -> RunRecord:
    """A request that could not even be read becomes a failed run, once per key."""
    return _record_invalid(run_id_for(key), key, None, exc, rt)


def _record_invalid(
    run_id: str, key: str, request: DeployRequest | None, exc: ArchdeployError, rt: Runtime
) -> RunRecord:
    now = rt.clock()
    run = RunRecord(
        run_id=run_id,
        idempotency_key=key,
        architecture_file=(request.architecture_uri if request else None) or "<inline>",
        requested_by=request.requested_by if request else "",
        error=str(exc),
        created_at=now,
        updated_at=now,
    )
    # The refused text is not kept: it may hold what the checks refused (a plain secret).
    run, created = rt.store.create_run(run, [], "")
    if created:
        log.warning("request refused: %s", exc)
        finish_run(run, [], rt, RunStatus.FAILED)
    return rt.store.get_run(run_id) or run
