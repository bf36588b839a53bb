"""What the three functions share: the cached runtime, Pub/Sub event decoding, and the
mapping of outcomes to acknowledge or retry.

Pub/Sub (through Eventarc, or an emulator push subscription) hands a CloudEvent whose
`data` is `{"message": {"data": base64, "attributes": {...}, "messageId": ...},
"subscription": ...}`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.core.handlers import Runtime
from shared.errors import ArchdeployError, BackendError
from shared.logs import configure, log_context

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)


@functools.cache
def settings() -> Settings:
    from shared.settings import load_settings

    return load_settings()


def http_token() -> str | None:
    token = settings().http_token
    return token.get_secret_value() if token else None


def http_source_root() -> Path:
    """The folder a local `source_root` sent over HTTP must stay inside."""
    return settings().http_source_root or Path.cwd()


def http_origins() -> tuple[str, ...]:
    return tuple(settings().http_allowed_origins)


@functools.cache
def runtime(role: str) -> Runtime:
    """Built once per instance, on first use, so cold starts import only what a role uses."""
    from shared.bootstrap import runtime as build

    configure(json_lines=True)
    return build(settings(), with_deployer=role == "worker")


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


def handle_pubsub(
    event: Any,
    role: str,
    handler: Callable[[bytes, Mapping[str, str], Runtime, str], object],
) -> None:
    """Decode a Pub/Sub CloudEvent and run `handler` under the log context and ack policy."""
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
        ),
        acknowledging(message_id or event_id),
    ):
        handler(data, attributes, runtime(role), message_id)
