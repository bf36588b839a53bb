"""`PubSubBus`: the message bus on Google Cloud Pub/Sub.

Logical topic names (`requests`, `tasks`, `completions`, `results`) map to the project's
real topic ids, so one deployment can run several archdeploy installations side by side.
Messages travel as their pydantic JSON; attributes carry the ids Eventarc filters and
logs need. The publisher client is created on first use (cold starts that never publish
never load the SDK) and honours `PUBSUB_EMULATOR_HOST` exactly as the library does.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel

from shared.adapters.gcp.retry import is_transient
from shared.errors import BackendError

logger = logging.getLogger(__name__)

# The high-level publisher takes attributes as **kwargs beside these parameters.
_RESERVED_ATTRIBUTES = frozenset({"topic", "data", "ordering_key", "retry", "timeout"})


class PubSubBus:
    """Publishes archdeploy messages to Pub/Sub topics; see `shared.ports.MessageBus`."""

    def __init__(
        self,
        project_id: str,
        topics: Mapping[str, str],
        *,
        publisher: Any = None,
        timeout: float = 30.0,
    ) -> None:
        self._project_id = project_id
        self._topics = dict(topics)
        self._publisher = publisher
        self._owns_publisher = publisher is None
        self._timeout = timeout
        self._lock = threading.Lock()

    def topic_path(self, topic: str) -> str:
        """The full resource name of a logical topic.

        Raises `BackendError` naming the known topics if `topic` is not one of them.
        """
        try:
            topic_id = self._topics[topic]
        except KeyError:
            known = ", ".join(sorted(self._topics)) or "(none configured)"
            raise BackendError(
                f"unknown topic {topic!r}: this bus knows {known}", retryable=False
            ) from None
        if topic_id.startswith("projects/"):
            return topic_id
        return f"projects/{self._project_id}/topics/{topic_id}"

    def publish(
        self, topic: str, message: BaseModel, *, attributes: Mapping[str, str] | None = None
    ) -> None:
        self.publish_many(topic, [(message, attributes or {})])

    def publish_many(
        self, topic: str, messages: Sequence[tuple[BaseModel, Mapping[str, str]]]
    ) -> None:
        """Hand every message to the publisher (which batches them), then wait for all.

        Raises one `BackendError` listing every message that was refused; it is
        retryable only if every failure was.
        """
        path = self.topic_path(topic)
        payloads = [(m.model_dump_json().encode(), _checked(a)) for m, a in messages]
        publisher = self._client()
        with _translated(f"publishing to {path}"):
            futures = [publisher.publish(path, data, **attrs) for data, attrs in payloads]
        failures = [f for f in (self._wait(fut) for fut in futures) if f is not None]
        if failures:
            details = sorted({detail for detail, _, _ in failures})
            raise BackendError(
                f"publishing to {path}: {len(failures)} of {len(futures)} message(s) refused: "
                + "; ".join(details),
                retryable=all(retryable for _, retryable, _ in failures),
            ) from failures[0][2]
        logger.debug("published %d message(s) to %s", len(futures), path)

    def ensure_topics(self) -> None:
        """Create every configured topic that does not exist yet (for development and tests)."""
        from google.api_core import exceptions as gexc

        publisher = self._client()
        for path in sorted({self.topic_path(t) for t in self._topics}):
            with _translated(f"creating topic {path}"):
                try:
                    publisher.create_topic(name=path)
                    logger.info("created topic %s", path)
                except gexc.AlreadyExists:
                    pass

    def close(self) -> None:
        """Flush and stop a publisher this bus created; one passed in is left to its owner."""
        with self._lock:
            publisher, self._publisher = self._publisher, None
        if publisher is not None and self._owns_publisher:
            publisher.stop()
            publisher.transport.close()

    def __enter__(self) -> PubSubBus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _client(self) -> Any:
        with self._lock:
            if self._publisher is None:
                from google.cloud.pubsub_v1 import PublisherClient

                self._publisher = PublisherClient()
                self._owns_publisher = True
            return self._publisher

    def _wait(self, future: Any) -> tuple[str, bool, BaseException] | None:
        """None if the message was accepted, else (what the API said, retryable, cause)."""
        from google.api_core import exceptions as gexc

        try:
            future.result(timeout=self._timeout)
        except concurrent.futures.TimeoutError as exc:
            return f"no answer within {self._timeout:g}s", True, exc
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            return (*_describe(exc), exc)
        return None


def _checked(attributes: Mapping[str, str]) -> dict[str, str]:
    for key, value in attributes.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise BackendError(
                f"message attribute {key!r}={value!r}: Pub/Sub attributes must be strings",
                retryable=False,
            )
        if key in _RESERVED_ATTRIBUTES:
            raise BackendError(
                f"message attribute {key!r} clashes with a publisher parameter: rename it",
                retryable=False,
            )
    return dict(attributes)


@contextmanager
def _translated(action: str) -> Iterator[None]:
    """Turn google.api_core errors into `BackendError`, retryable when transient."""
    from google.api_core import exceptions as gexc

    try:
        yield
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        detail, retryable = _describe(exc)
        raise BackendError(f"{action}: {detail}", retryable=retryable) from exc


def _describe(exc: Exception) -> tuple[str, bool]:
    from google.api_core import exceptions as gexc

    if isinstance(exc, gexc.RetryError):
        return f"gave up retrying: {exc.message}", True
    return str(exc), is_transient(exc)
