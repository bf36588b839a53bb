"""From a delivered message's bytes to a handler, the same for every transport.

The functions' `main.py` files and the in-process bus both call these. A message that
cannot be decoded is poison: it is logged with its id and acknowledged (returning
normally), never retried forever. Errors worth a retry propagate so the bus redelivers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from shared.core.dispatcher import record_refused
from shared.core.handlers import (
    Runtime,
    advance_run,
    dispatch_request,
    fail_task,
    record_completion,
    run_task,
)
from shared.errors import ArchdeployError
from shared.messages import (
    TOPIC_COMPLETIONS,
    TOPIC_REQUESTS,
    TOPIC_TASKS,
    DeployRequest,
    Phase,
    RunRecord,
    TaskCompletion,
    TaskMessage,
    TaskStatus,
)

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


class PoisonMessage(ArchdeployError):
    """A message that no number of redeliveries can make valid."""


def decode(model: type[M], data: bytes, message_id: str = "") -> M:
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(message)"
        raise PoisonMessage(
            f"message {message_id or '(no id)'} is not a valid {model.__name__}: "
            f"{where}: {first['msg']}"
        ) from None


def on_request(
    data: bytes, attributes: Mapping[str, str], rt: Runtime, message_id: str = ""
) -> RunRecord | None:
    try:
        request = decode(DeployRequest, data, message_id)
    except PoisonMessage as exc:
        # Recorded as a failed run, keyed by the message, so the sender can see why.
        log.error("%s: acknowledged, recorded as a failed run", exc)
        return record_refused(message_id or "(no id)", exc, rt) if message_id else None
    return dispatch_request(request, rt, message_id=message_id or None)


def on_task(data: bytes, attributes: Mapping[str, str], rt: Runtime, message_id: str = "") -> None:
    try:
        message = decode(TaskMessage, data, message_id)
    except PoisonMessage as exc:
        log.error("%s: acknowledged; its task fails", exc)
        if attributes.get("run_id") and attributes.get("task_id"):
            fail_task(attributes["run_id"], attributes["task_id"], str(exc), rt)
        return
    run_task(message, rt)


def on_completion(
    data: bytes, attributes: Mapping[str, str], rt: Runtime, message_id: str = ""
) -> None:
    try:
        completion = decode(TaskCompletion, data, message_id)
    except PoisonMessage as exc:
        # The worker stored its outcome before publishing: the run can still move on.
        log.error("%s: acknowledged and dropped", exc)
        if attributes.get("run_id"):
            advance_run(attributes["run_id"], rt)
        return
    record_completion(completion, rt)


def on_dead_letter(
    data: bytes, attributes: Mapping[str, str], rt: Runtime, message_id: str = ""
) -> None:
    """A message Pub/Sub gave up on after its maximum deliveries. A task message fails its
    task, so the run ends instead of hanging; anything else moves its run on if it can."""
    run_id, task_id = attributes.get("run_id"), attributes.get("task_id")
    log.error("message %s was dead-lettered (run %s, task %s)", message_id, run_id, task_id)
    if run_id and task_id and attributes.get("kind", "task") == "task":
        fail_task(run_id, task_id, "its message was dead-lettered after repeated failures", rt)
    elif run_id:
        advance_run(run_id, rt)
    elif attributes.get("buildId"):  # a `cloud-builds` event: its tags name the task
        from shared.adapters.gcp.cloud_build import task_of_build_event

        found = task_of_build_event(data, attributes)
        if found is not None:
            run_id, task_id, build = found
            why = f"the status event of build {build} was dead-lettered after repeated failures"
            fail_task(run_id, task_id, why, rt)


def on_build_event(
    data: bytes, attributes: Mapping[str, str], rt: Runtime, message_id: str = ""
) -> None:
    """A Cloud Build status change from the `cloud-builds` topic: terminal statuses of
    archdeploy's builds complete their build task; everything else is ignored."""
    from shared.adapters.gcp.cloud_build import parse_build_notification

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


def subscribe_all(bus: object, rt: Runtime) -> None:
    """Wire the three handlers to an in-process bus's topics."""
    subscribe = bus.subscribe  # type: ignore[attr-defined]
    subscribe(TOPIC_REQUESTS, lambda data, attrs: on_request(data, attrs, rt))
    subscribe(TOPIC_TASKS, lambda data, attrs: on_task(data, attrs, rt))
    subscribe(TOPIC_COMPLETIONS, lambda data, attrs: on_completion(data, attrs, rt))
