"""The embedded message bus: topics delivered to subscribers on bounded thread pools.

It behaves like Pub/Sub where the core can tell: messages travel as JSON bytes with
string attributes, a handler that raises is redelivered (up to `max_deliveries`), and
each topic has its own pool so slow builds never queue the aggregator behind them.

The completions topic gets a small pool of its own (`FAN_IN_PARALLELISM`): every
completion of a run ends in compare-and-set writes on that run's records, so aggregator
threads beyond a couple only queue on the store's lock and fight for the GIL with the
workers (measured in docs/performance.md: a 300-service run took 1.3-2.9 s with 300
aggregator threads, 0.8-1.0 s with 1 or 2).

The pools are `_Pool`s, not `ThreadPoolExecutor`s: publishing must not wait for a thread
to start. `Thread.start` blocks its caller until the new thread has run, a hand-over of
the interpreter lock that costs up to a switch interval while other threads are busy, so
the dispatcher releasing 1,000 builds waited on 1,000 of them (issue 19).
"""

from __future__ import annotations

import _thread
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from queue import Empty, SimpleQueue

from pydantic import BaseModel

from shared.logs import log_context
from shared.messages import TOPIC_COMPLETIONS

log = logging.getLogger(__name__)

Subscriber = Callable[[bytes, Mapping[str, str]], None]

DEFAULT_PARALLELISM = 32
# Threads for topics whose handlers serialise on the store anyway (see the docstring).
FAN_IN_PARALLELISM = {TOPIC_COMPLETIONS: 2}


class DeliveryFailed(Exception):
    """A handler kept failing; `drain()` raises this with the last error as its cause."""


class InProcessBus:
    """`MessageBus` on thread pools: one pool per topic, `parallelism` threads each
    (fan-in topics fewer, see `FAN_IN_PARALLELISM`; `topic_parallelism` overrides both)."""

    def __init__(
        self,
        *,
        parallelism: int = DEFAULT_PARALLELISM,
        topic_parallelism: Mapping[str, int] | None = None,
        max_deliveries: int = 5,
        retry_delay: float = 0.05,
    ) -> None:
        self._parallelism = parallelism
        self._topic_parallelism = {
            **{topic: min(n, parallelism) for topic, n in FAN_IN_PARALLELISM.items()},
            **(topic_parallelism or {}),
        }
        self._max_deliveries = max_deliveries
        self._retry_delay = retry_delay
        self._subscribers: dict[str, list[Subscriber]] = {}
        self._pools: dict[str, _Pool] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._errors: list[BaseException] = []
        self._closed = False
        self.published: list[tuple[str, bytes, dict[str, str]]] = []
        self.record = False  # keep every published message in `published` (tests, benchmarks)

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        self._subscribers.setdefault(topic, []).append(subscriber)

    def publish(
        self, topic: str, message: BaseModel, *, attributes: Mapping[str, str] | None = None
    ) -> None:
        self.publish_raw(topic, message.model_dump_json().encode(), attributes or {})

    def publish_many(
        self, topic: str, messages: Sequence[tuple[BaseModel, Mapping[str, str]]]
    ) -> None:
        for message, attributes in messages:
            self.publish(topic, message, attributes=attributes)

    def publish_raw(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> None:
        """Deliver bytes as they are: what a poison-message test needs."""
        attrs = dict(attributes)
        if self.record:
            self.published.append((topic, data, attrs))
        for subscriber in self._subscribers.get(topic, []):
            with self._lock:
                if self._closed:
                    raise RuntimeError("the in-process bus is closed")
                self._in_flight += 1
            self._pool(topic).submit(partial(self._deliver, subscriber, data, attrs))

    def drain(self, timeout: float | None = None) -> None:
        """Wait until no message is in flight; re-raise the first handler that gave up."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{self._in_flight} messages still in flight")
                self._idle.wait(remaining)
            errors, self._errors = self._errors, []
        if errors:
            raise DeliveryFailed(f"{len(errors)} message(s) could not be handled") from errors[0]

    def close(self) -> None:
        with self._lock:
            self._closed = True
        for pool in self._pools.values():
            for _ in range(pool.shutdown()):
                self._settled()  # a queued message the close dropped

    def _pool(self, topic: str) -> _Pool:
        with self._lock:
            pool = self._pools.get(topic)
            if pool is None:
                pool = _Pool(self._topic_parallelism.get(topic, self._parallelism))
                self._pools[topic] = pool
            return pool

    def _deliver(self, subscriber: Subscriber, data: bytes, attributes: dict[str, str]) -> None:
        try:
            self._deliver_once(subscriber, data, attributes)
        finally:
            self._settled()

    def _deliver_once(
        self, subscriber: Subscriber, data: bytes, attributes: dict[str, str]
    ) -> None:
        for delivery in range(1, self._max_deliveries + 1):
            try:
                with log_context(
                    run_id=attributes.get("run_id"), task_id=attributes.get("task_id")
                ):
                    subscriber(data, attributes)
                return
            except Exception as exc:  # the bus boundary: redeliver like Pub/Sub would
                if delivery == self._max_deliveries:
                    log.error("message dead-lettered after %d deliveries", delivery, exc_info=True)
                    with self._lock:
                        self._errors.append(exc)
                    return
                log.warning("handler failed (delivery %d): %s; redelivering", delivery, exc)
                time.sleep(self._retry_delay * delivery)

    def _settled(self) -> None:
        with self._idle:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.notify_all()


class _Pool:
    """At most `size` threads running jobs from one queue, each started only when no idle
    thread is free for a job, and never waited for (`_thread.start_new_thread`).

    Every queued job has exactly one thread reserved for it: an idle one (`_idle`), one
    started for it, or the next one to finish a job (`_backlog`), so no job waits while
    the pool has room, as in `ThreadPoolExecutor`."""

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._jobs: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)
        self._threads = 0
        self._idle = 0
        self._backlog = 0
        self._stopping = False

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._stopping:
                raise RuntimeError("the in-process bus is closed")
            self._jobs.put(job)
            if self._idle:
                self._idle -= 1
            elif self._threads < self._size:
                self._threads += 1
                _thread.start_new_thread(self._work, ())
            else:
                self._backlog += 1

    def shutdown(self) -> int:
        """Drop the jobs not started, wait for every thread to end; returns how many
        were dropped (as `ThreadPoolExecutor.shutdown(cancel_futures=True)`)."""
        dropped = 0
        with self._lock:
            self._stopping = True
            while True:
                try:
                    dropped += self._jobs.get_nowait() is not None
                except Empty:
                    break
            for _ in range(self._threads):
                self._jobs.put(None)
            while self._threads:
                self._ended.wait()
        return dropped

    def _work(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                try:
                    job()
                except BaseException:  # the bus reports handler errors; this is a last stop
                    log.exception("in-process bus job failed")
                with self._lock:
                    if self._backlog:
                        self._backlog -= 1
                    else:
                        self._idle += 1
        finally:
            with self._lock:
                self._threads -= 1
                self._ended.notify_all()
