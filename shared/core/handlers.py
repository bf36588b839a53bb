"""From a delivered message's bytes to a handler, the same for every transport.

The functions' `main.py` files and the in-process bus both call these. A message that
cannot be decoded is poison: it is logged with its id and acknowledged (returning
normally), never retried forever. Errors worth a retry propagate so the bus redelivers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from shared.core.aggregator import record_completion
from shared.core.control import fail_task
from shared.core.dispatcher import dispatch_request, record_refused, run_id_for
from shared.core.publishing import STORED
from shared.core.run_engine import advance_run
from shared.core.runtime import Runtime
from shared.core.worker import run_task
from shared.errors import ArchdeployError, BackendError, UsageError
from shared.messages import (
    TOPIC_COMPLETIONS,
    TOPIC_REQUESTS,
    TOPIC_TASKS,
    DeployRequest,
    RunRecord,
    TaskCompletion,
    TaskMessage,
)

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
# A request's attribute: after this time (epoch seconds), a source that keeps failing
# ends the run as failed instead of asking for another delivery (the webhook sets it).
GIVE_UP_AT = "give_up_at"


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
    try:
        return dispatch_request(request, rt, message_id=message_id or None)
    except BackendError as exc:
        if not exc.retryable or not _past(attributes.get(GIVE_UP_AT), rt):
            raise
        # The sender answered with this run's id: end it, rather than let it stay unknown.
        key = request.idempotency_key or message_id or "(no id)"
        log.error("request for run %s given up: %s", run_id_for(key), exc)
        return record_refused(key, _gave_up(request, exc), rt)


def _past(deadline: str | None, rt: Runtime) -> bool:
    try:
        return deadline is not None and rt.clock().timestamp() >= float(deadline)
    except ValueError:
        return False


def _gave_up(request: DeployRequest | None, exc: Exception) -> UsageError:
    where = (request.architecture_uri if request else None) or "the architecture"
    return UsageError(
        f"{where} could not be read, and retrying was given up: {exc} "
        "(push again, or redeliver the webhook, once the source answers)"
    )


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
    record_completion(completion, rt, stored=attributes.get(STORED) == "1")


def on_dead_letter(
    data: bytes, attributes: Mapping[str, str], rt: Runtime, message_id: str = ""
) -> None:
    """A message Pub/Sub gave up on after its maximum deliveries. A task message fails its
    task, so the run ends instead of hanging; anything else moves its run on if it can."""
    run_id, task_id = attributes.get("run_id"), attributes.get("task_id")
    log.error("message %s was dead-lettered (run %s, task %s)", message_id, run_id, task_id)
    if run_id and task_id and attributes.get("kind", "task") == "task":
        fail_task(run_id, task_id, "its message was dead-lettered after repeated failures", rt)
    elif run_id and rt.store.get_run(run_id) is None and GIVE_UP_AT in attributes:
        # A request whose run was never made: the sender holds its run id.
        with contextlib.suppress(PoisonMessage):
            request = decode(DeployRequest, data, message_id)
            key = request.idempotency_key or message_id
            if key and run_id_for(key) == run_id:
                record_refused(key, _gave_up(request, UsageError("dead-lettered")), rt)
    elif run_id:
        advance_run(run_id, rt)


def subscribe_all(bus: object, rt: Runtime) -> None:
    """Wire the three handlers to an in-process bus's topics."""
    subscribe = bus.subscribe  # type: ignore[attr-defined]
    subscribe(TOPIC_REQUESTS, lambda data, attrs: on_request(data, attrs, rt))
    subscribe(TOPIC_TASKS, lambda data, attrs: on_task(data, attrs, rt))
    subscribe(TOPIC_COMPLETIONS, lambda data, attrs: on_completion(data, attrs, rt))
