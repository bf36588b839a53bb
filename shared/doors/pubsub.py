"""The Pub/Sub door: decode a pushed CloudEvent, then run one core handler on its message
under the log context, acknowledging what no retry can fix.

Pub/Sub (through Eventarc, or an emulator push subscription) hands a CloudEvent whose
`data` is `{"message": {"data": base64, "attributes": {...}, "messageId": ...},
"subscription": ...}`.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from shared.core.runtime import Runtime
from shared.errors import ArchdeployError, BackendError
from shared.logs import log_context, trace_labels

log = logging.getLogger(__name__)


def pubsub_message(event_data: Any) -> tuple[bytes, dict[str, str], str]:
    """(data, attributes, message id) of a Pub/Sub CloudEvent; raises ValueError if malformed."""
    if not isinstance(event_data, Mapping) or not isinstance(event_data.get("message"), Mapping):
        raise ValueError("the event carries no Pub/Sub `message`")
    message = event_data["message"]
    try:
        data = base64.b64decode(message.get("data") or b"", validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise ValueError(f"the message's data is not base64: {exc}") from None
    attributes = {str(k): str(v) for k, v in (message.get("attributes") or {}).items()}
    message_id = str(message.get("messageId") or message.get("message_id") or "")
    return data, attributes, message_id


@contextmanager
def acknowledging(event_id: str) -> Iterator[None]:
    """Acknowledge what no retry can fix; raise (so Pub/Sub redelivers) what one might."""
    try:
        yield
    except BackendError as exc:
        if exc.retryable:
            log.warning("event %s: transient failure, asking for redelivery: %s", event_id, exc)
            raise
        log.error("event %s: %s (acknowledged)", event_id, exc)
    except ArchdeployError as exc:
        log.error("event %s: %s (acknowledged)", event_id, exc)


def handle(
    event: Any,
    handler: Callable[[bytes, Mapping[str, str], Runtime, str], object],
    runtime: Callable[[], Runtime],
) -> None:
    """Decode a Pub/Sub CloudEvent and run `handler` (one of `shared.core.handlers`) on it
    with `runtime()`, under the log context and ack policy."""
    event_id = str(event["id"]) if "id" in event else ""
    try:
        data, attributes, message_id = pubsub_message(event.data)
    except ValueError as exc:
        log.error("event %s is not a Pub/Sub message (%s): acknowledged and dropped", event_id, exc)
        return
    with (
        log_context(
            run_id=attributes.get("run_id"),
            task_id=attributes.get("task_id"),
            service=attributes.get("service"),
            phase=attributes.get("phase"),
            **trace_labels(_extension(event, "traceparent")),
        ),
        acknowledging(message_id or event_id),
    ):
        handler(data, attributes, runtime(), message_id)


def _extension(event: Any, name: str) -> str | None:
    """A CloudEvent extension attribute (e.g. `traceparent`), if the event carries it."""
    get = getattr(event, "get", None)
    value = get(name) if callable(get) else None
    return str(value) if value else None
