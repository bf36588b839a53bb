"""Cloud Build's status notifications (the `cloud-builds` topic) as completions of the
build tasks a worker submitted: the aggregator function's `build_events` entry point."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from shared.adapters.gcp.cloud_build import parse_build_notification, task_of_build_event
from shared.core.aggregator import record_completion
from shared.core.control import fail_task
from shared.core.handlers import on_dead_letter
from shared.core.runtime import Runtime
from shared.messages import Phase, TaskCompletion, TaskStatus

log = logging.getLogger(__name__)


def on_build_event(
    data: bytes, attributes: Mapping[str, str], rt: Runtime, message_id: str = ""
) -> None:
    """A Cloud Build status change from the `cloud-builds` topic: terminal statuses of
    archdeploy's builds complete their build task; everything else is ignored."""
    try:
        note = parse_build_notification(data, attributes)
    except ValueError as exc:
        log.error("build event %s is not a build (%s): acknowledged and dropped", message_id, exc)
        return
    if note is None:
        return
    completion = TaskCompletion(
        run_id=note.run_id,
        task_id=note.task_id,
        phase=Phase.BUILD,
        service=note.service,
        status=TaskStatus.SUCCEEDED if note.status == "succeeded" else TaskStatus.FAILED,
        image=note.image or None,
        error=note.error or None,
        build_id=note.build_id,
        worker="cloud-build",
    )
    record_completion(completion, rt)


def on_dead_message(
    data: bytes, attributes: Mapping[str, str], rt: Runtime, message_id: str = ""
) -> None:
    """The `dead_letters` entry point: a dead-lettered `cloud-builds` event fails its build
    task at once (its tags name the task) instead of leaving the run to wait for the build
    deadline; any other message goes to the core's `on_dead_letter`."""
    if not attributes.get("buildId"):
        on_dead_letter(data, attributes, rt, message_id)
        return
    found = task_of_build_event(data, attributes)
    if found is None:
        return  # not one of archdeploy's builds
    run_id, task_id, build = found
    log.error("build event %s of build %s was dead-lettered", message_id, build)
    why = f"the status event of build {build} was dead-lettered after repeated failures"
    fail_task(run_id, task_id, why, rt)
