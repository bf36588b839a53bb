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

The tasks topic's pool is adaptive: a thread per message only for messages whose handlers
wait (the worker says so around a build or deploy, `waiting`); work that only uses the
interpreter runs on `EAGER_THREADS` threads, since more threads cannot run Python at once
and only fight for the interpreter lock (1,000 zero-cost tasks: 1.55 s on 1,000 threads,
1.20 s on 4-16; docs/performance.md, "Issue 19: fewer threads").
"""

from __future__ import annotations

import _thread
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial
from queue import Empty, SimpleQueue

from pydantic import BaseModel

from shared.logs import log_context
from shared.messages import TOPIC_COMPLETIONS, TOPIC_TASKS

log = logging.getLogger(__name__)

Subscriber = Callable[[bytes, Mapping[str, str]], None]

DEFAULT_PARALLELISM = 32
# Threads for topics whose handlers serialise on the store anyway (see the docstring).
FAN_IN_PARALLELISM = {TOPIC_COMPLETIONS: 2}
# Topics whose handlers say when they wait (the worker, around a build or deploy): their
# pools run at most this many threads that are not waiting (see `_Pool`).
ADAPTIVE_TOPICS = (TOPIC_TASKS,)
EAGER_THREADS = 4


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
        eager_threads: int = EAGER_THREADS,
    ) -> None:
        self._parallelism = parallelism
        self._eager = eager_threads
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
        if not self.record and not self._subscribers.get(topic):
            return  # heard by nobody (a run's result, embedded): not even serialised
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

    def threads(self, topic: str) -> int:
        """How many threads the topic's pool has now (tests, benchmarks)."""
        pool = self._pools.get(topic)
        return pool.threads if pool is not None else 0

    def waiting(self) -> AbstractContextManager[None]:
        """Around a stretch where a handler waits on the outside world (a build, a
        deploy): its pool may start another thread for queued messages meanwhile.
        Anywhere but in one of this bus's threads, it does nothing. (A pool knows its
        bus: no lock taken here, twice per task, against every publish and settle.)"""
        pool: _Pool | None = getattr(_here, "pool", None)
        return pool.waiting() if pool is not None and pool.owner is self else nullcontext()

    def _pool(self, topic: str) -> _Pool:
        with self._lock:
            pool = self._pools.get(topic)
            if pool is None:
                eager = self._eager if topic in ADAPTIVE_TOPICS else None
                pool = _Pool(self._topic_parallelism.get(topic, self._parallelism), eager)
                self._pools[topic], pool.owner = pool, self
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

    Every queued job has one thread reserved for it: an idle one (`_idle`), one started
    for it, or the next one to finish a job (`_backlog`). With `eager` (an adaptive
    pool), at most `eager` threads run jobs that are not waiting (see `waiting`); the
    backlog gets more threads, up to `size`, only from the watcher (`_Watcher`)."""

    def __init__(self, size: int, eager: int | None = None) -> None:
        self._size = max(1, size)
        self._eager = self._size if eager is None else max(1, min(eager, self._size))
        self._jobs: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)
        self._threads = 0
        self._idle = 0
        self._backlog = 0
        self._finished = 0  # jobs run so far: the watcher's sign of progress
        self._waiting: dict[int, float] = {}  # thread -> since when it waits (monotonic)
        self._replaced: set[int] = set()  # waiting threads another was started for
        self._blocking = False  # whether the last wait seen was long: handlers block
        self._stopping = False
        self._watcher = _Watcher(self) if self._eager < self._size else None
        self.owner: InProcessBus | None = None  # the bus whose topic this pool serves

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._stopping:
                raise RuntimeError("the in-process bus is closed")
            self._jobs.put(job)
            if self._idle:
                self._idle -= 1
            elif self._threads < self._size and self._running() < self._eager:
                self._start(1)
            else:
                self._backlog += 1
                if self._watcher is not None:
                    self._watcher.wake()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """This pool thread waits on the outside world (a build, a deploy) for a while:
        queued jobs may get another thread meanwhile."""
        me = _thread.get_ident()
        if me in self._waiting:  # already said so further up this thread's stack
            yield
            return
        with self._lock:
            self._waiting[me] = since = time.monotonic()
            if self._backlog and self._watcher is not None:
                if self._blocking:  # the last wait was long: don't wait to see this one
                    self._stand_ins([me])
                else:
                    self._watcher.wake()
        try:
            yield
        finally:
            with self._lock:
                del self._waiting[me]
                self._replaced.discard(me)
                self._blocking = time.monotonic() - since >= _Watcher.PATIENCE

    @property
    def threads(self) -> int:
        return self._threads

    def _running(self) -> int:
        """Threads that count against `eager`: neither idle nor waiting with a stand-in."""
        return self._threads - self._idle - len(self._replaced)

    def _stand_ins(self, waiting: list[int]) -> None:
        """Start two threads for each of `waiting` (the lock held), as far as the backlog
        and `size` go: a wave of jobs that all wait gets its threads in a few doublings."""
        if self._grow(2 * len(waiting)):
            self._replaced.update(waiting)

    def _grow(self, wanted: int) -> int:
        """Start up to `wanted` threads for queued jobs, as far as the backlog and `size`
        go (the lock held); returns how many were started."""
        n = min(self._backlog, self._size - self._threads, wanted)
        if n > 0:
            self._backlog -= n
            self._start(n)
        return max(n, 0)

    def _start(self, n: int) -> None:
        """Start `n` threads (the lock held)."""
        for _ in range(n):
            self._threads += 1
            _thread.start_new_thread(self._work, ())

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
            self._backlog = 0  # no job left to start a thread for
            for _ in range(self._threads):
                self._jobs.put(None)
            if self._watcher is not None:
                self._watcher.wake()
            while self._threads or (self._watcher is not None and self._watcher.alive):
                self._ended.wait()
        return dropped

    def _work(self) -> None:
        _here.pool = self
        try:
            while (job := self._jobs.get()) is not None:
                try:
                    job()
                except BaseException:  # the bus reports handler errors; this is a last stop
                    log.exception("in-process bus job failed")
                with self._lock:
                    self._finished += 1
                    if self._backlog:
                        self._backlog -= 1
                    else:
                        self._idle += 1
        finally:
            with self._lock:
                self._threads -= 1
                self._ended.notify_all()


class _Watcher:
    """An adaptive pool's one extra thread: while jobs wait for a thread, it starts two
    stand-ins for each pool thread that has been `waiting` for `PATIENCE` seconds, and,
    should no job end for `STALL` seconds (a handler blocked without saying so), `eager`
    more threads each time, so the pool never holds a job back for good."""

    PATIENCE = 0.001
    STALL = 0.05

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._wake = threading.Condition(pool._lock)
        self.alive = False

    def wake(self) -> None:
        """Called with the pool's lock held."""
        if self._pool._stopping and not self.alive:
            return
        if not self.alive:
            self.alive = True
            _thread.start_new_thread(self._watch, ())
        else:
            self._wake.notify()

    def _watch(self) -> None:
        pool = self._pool
        with pool._lock:
            try:
                last, progress_at = pool._finished, time.monotonic()
                while not pool._stopping:
                    if not pool._backlog:
                        self._wake.wait()
                        last, progress_at = pool._finished, time.monotonic()
                        continue
                    now = time.monotonic()
                    stalled = now - progress_at >= self.STALL
                    if pool._finished != last or stalled:
                        last, progress_at = pool._finished, now
                    self._stand_ins(now, stalled=stalled)
                    self._wake.wait(self._nap(pool))
            finally:
                self.alive = False
                pool._ended.notify_all()

    def _nap(self, pool: _Pool) -> float | None:
        """How long to sleep with jobs queued. A full pool starts nothing until `close`
        (its threads end only then), so the watcher sleeps until woken: polling while
        every thread waits on a long build cost a wake-up a millisecond for its length.
        Without a thread waiting unreplaced, nothing to see before a stall (`waiting`
        wakes us)."""
        if pool._threads >= pool._size:
            return None
        if any(thread not in pool._replaced for thread in pool._waiting):
            return self.PATIENCE
        return self.STALL

    def _stand_ins(self, now: float, *, stalled: bool) -> None:
        pool = self._pool
        if stalled:  # `eager` more at a time: a busy interpreter looks stalled too
            pool._grow(pool._eager)
            return
        long = [
            thread
            for thread, since in pool._waiting.items()
            if thread not in pool._replaced and now - since >= self.PATIENCE
        ]
        if long:
            pool._blocking = True
            pool._stand_ins(long)


_here = threading.local()  # a pool thread's pool, for `InProcessBus.waiting`
