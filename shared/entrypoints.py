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

from shared.handlers import Runtime, dispatch_request, record_completion, run_task
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


class PoisonMessage(Exception):
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
        log.error("%s: acknowledged and dropped", exc)
        return None
    return dispatch_request(request, rt, message_id=message_id or None)


def on_task(data: bytes, attributes: Mapping[str, str], rt: Runtime, message_id: str = "") -> None:
    try:
        message = decode(TaskMessage, data, message_id)
    except PoisonMessage as exc:
        log.error("%s: acknowledged and dropped", exc)
        return
    run_task(message, rt)


def on_completion(
    data: bytes, attributes: Mapping[str, str], rt: Runtime, message_id: str = ""
) -> None:
    try:
        completion = decode(TaskCompletion, data, message_id)
    except PoisonMessage as exc:
        log.error("%s: acknowledged and dropped", exc)
        return
    record_completion(completion, rt)


def on_build_event(
    data: bytes, attributes: Mapping[str, str], rt: Runtime, message_id: str = ""
) -> None:
    """A Cloud Build status change from the `cloud-builds` topic: terminal statuses of
    archdeploy's builds complete their build task; everything else is ignored."""
    from shared.adapters.gcp_build import parse_build_notification

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
