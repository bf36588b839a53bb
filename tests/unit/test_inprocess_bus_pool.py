"""The in-process bus's thread pools: at most `parallelism` handlers at once per topic,
none of a topic's messages waiting while it has room, and a close that drops the rest."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import pytest

from shared.adapters.local.inprocess_bus import InProcessBus, _Watcher
from shared.messages import TOPIC_TASKS

TIMEOUT = 30.0


def _publish(bus: InProcessBus, topic: str, i: int) -> None:
    bus.publish_raw(topic, f"message {i}".encode(), {})


def test_every_wave_runs_all_its_messages_at_once_up_to_the_parallelism() -> None:
    bus = InProcessBus(parallelism=5)
    for wave in range(3):  # threads started, then reused: each wave must still fit at once
        together = threading.Barrier(5, timeout=TIMEOUT)  # broken if any of the 5 waits
        bus.subscribe(f"topic-{wave}", lambda _d, _a, b=together: b.wait())  # type: ignore[misc]
        for i in range(5):
            _publish(bus, f"topic-{wave}", i)
        bus.drain(TIMEOUT)
    bus.close()


def test_no_more_than_the_parallelism_run_at_once_and_every_message_runs() -> None:
    bus = InProcessBus(parallelism=3)
    lock, running, peak, seen = threading.Lock(), [0], [0], []
    gate = threading.Event()

    def handler(data: bytes, _attributes: Mapping[str, str]) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        gate.wait(TIMEOUT)
        with lock:
            running[0] -= 1
            seen.append(data)

    bus.subscribe("t", handler)
    for i in range(20):
        _publish(bus, "t", i)
    threading.Timer(0.2, gate.set).start()
    bus.drain(TIMEOUT)
    bus.close()
    assert peak[0] == 3
    assert len(seen) == 20


def test_close_drops_the_messages_not_started_and_drain_returns() -> None:
    bus = InProcessBus(parallelism=1)
    started, release, ran = threading.Event(), threading.Event(), []

    def handler(data: bytes, _attributes: Mapping[str, str]) -> None:
        ran.append(data)
        started.set()
        release.wait(TIMEOUT)

    bus.subscribe("t", handler)
    for i in range(4):
        _publish(bus, "t", i)
    assert started.wait(TIMEOUT)
    closing = threading.Thread(target=bus.close)
    closing.start()
    release.set()
    closing.join(TIMEOUT)
    assert not closing.is_alive()
    bus.drain(TIMEOUT)  # the dropped messages are no longer in flight
    assert len(ran) == 1


# The tasks topic's pool is adaptive: at most `eager_threads` handlers run at once unless
# some say they wait (`InProcessBus.waiting`, the worker around a build or deploy).


def test_handlers_that_say_they_wait_all_run_at_once_beyond_the_eager_threads() -> None:
    bus = InProcessBus(parallelism=10, eager_threads=2)
    together = threading.Barrier(10, timeout=TIMEOUT)  # broken if any of the 10 waits

    def handler(_data: bytes, _attributes: Mapping[str, str]) -> None:
        with bus.waiting():
            together.wait()

    bus.subscribe(TOPIC_TASKS, handler)
    for i in range(10):
        _publish(bus, TOPIC_TASKS, i)
    bus.drain(TIMEOUT)
    bus.close()


def test_handlers_that_do_not_wait_get_no_more_threads_than_the_eager_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_Watcher, "STALL", TIMEOUT)  # no stall to rescue from here
    bus = InProcessBus(parallelism=10, eager_threads=2)
    started, release, ran = threading.Semaphore(0), threading.Event(), []

    def handler(data: bytes, _attributes: Mapping[str, str]) -> None:
        started.release()
        release.wait(TIMEOUT)  # busy, and not saying it waits
        ran.append(data)

    bus.subscribe(TOPIC_TASKS, handler)
    for i in range(6):
        _publish(bus, TOPIC_TASKS, i)
    assert started.acquire(timeout=TIMEOUT) and started.acquire(timeout=TIMEOUT)
    assert bus.threads(TOPIC_TASKS) == 2  # the other four messages wait their turn
    release.set()
    bus.drain(TIMEOUT)
    assert len(ran) == 6
    assert bus.threads(TOPIC_TASKS) == 2
    bus.close()


def test_a_handler_blocked_without_saying_so_does_not_hold_the_queue_back_for_good() -> None:
    bus = InProcessBus(parallelism=3, eager_threads=1)
    second_ran = threading.Event()

    def handler(data: bytes, _attributes: Mapping[str, str]) -> None:
        if data == b"message 0":
            assert second_ran.wait(TIMEOUT), "message 1 never got a thread"
        else:
            second_ran.set()

    bus.subscribe(TOPIC_TASKS, handler)
    _publish(bus, TOPIC_TASKS, 0)
    _publish(bus, TOPIC_TASKS, 1)
    bus.drain(TIMEOUT)
    bus.close()


def test_waiting_outside_the_bus_threads_changes_nothing() -> None:
    bus = InProcessBus(parallelism=2)
    with bus.waiting():
        pass
    bus.close()


def test_close_while_handlers_wait_with_messages_queued_drops_them_and_returns() -> None:
    bus = InProcessBus(parallelism=2, eager_threads=1)
    started, release, ran = threading.Semaphore(0), threading.Event(), []

    def handler(data: bytes, _attributes: Mapping[str, str]) -> None:
        ran.append(data)
        started.release()
        with bus.waiting():
            release.wait(TIMEOUT)

    bus.subscribe(TOPIC_TASKS, handler)
    for i in range(4):
        _publish(bus, TOPIC_TASKS, i)
    # the eager thread and one stand-in (the pool's size) run; two messages stay queued
    assert started.acquire(timeout=TIMEOUT) and started.acquire(timeout=TIMEOUT)
    closing = threading.Thread(target=bus.close)
    closing.start()
    release.set()
    closing.join(TIMEOUT)
    assert not closing.is_alive()
    bus.drain(TIMEOUT)
    assert len(ran) == 2
    assert bus.threads(TOPIC_TASKS) == 0


def test_saying_it_waits_twice_in_one_handler_is_the_same_as_once() -> None:
    bus = InProcessBus(parallelism=4, eager_threads=1)
    ran = []

    def handler(data: bytes, _attributes: Mapping[str, str]) -> None:
        with bus.waiting(), bus.waiting():
            ran.append(data)
        with bus.waiting():  # and again after: nothing was left behind
            pass

    bus.subscribe(TOPIC_TASKS, handler)
    for i in range(5):
        _publish(bus, TOPIC_TASKS, i)
    bus.drain(TIMEOUT)
    bus.close()
    assert len(ran) == 5


class _RecordingWake:
    """The watcher's condition, noting each sleep it takes while its pool is full (every
    thread started) with messages queued: nothing it could start until a thread ends."""

    def __init__(self, watcher: _Watcher) -> None:
        self._cond, self._pool = watcher._wake, watcher._pool
        self.timed_when_full = 0
        self.untimed_when_full = threading.Event()
        self.enough = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        pool = self._pool
        if pool._backlog and pool._threads >= pool._size:
            if timeout is None:
                self.untimed_when_full.set()
            else:
                self.timed_when_full += 1
                if self.timed_when_full >= 20:
                    self.enough.set()
        return self._cond.wait(timeout)

    def notify(self) -> None:
        self._cond.notify()


def test_the_watcher_sleeps_while_the_pool_is_full_and_its_threads_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every thread waiting on a long build, messages queued behind them: the watcher can
    start nothing, so it must not wake every millisecond until the builds end."""
    recorders: list[_RecordingWake] = []
    init = _Watcher.__init__

    def recording_init(self: _Watcher, pool: object) -> None:
        init(self, pool)  # type: ignore[arg-type]
        recorders.append(recorder := _RecordingWake(self))
        self._wake = recorder  # type: ignore[assignment]

    monkeypatch.setattr(_Watcher, "__init__", recording_init)
    bus = InProcessBus(parallelism=2, eager_threads=1)
    started, release = threading.Semaphore(0), threading.Event()

    def handler(_data: bytes, _attributes: Mapping[str, str]) -> None:
        started.release()
        with bus.waiting():
            release.wait(TIMEOUT)

    bus.subscribe(TOPIC_TASKS, handler)
    for i in range(4):
        _publish(bus, TOPIC_TASKS, i)
    assert started.acquire(timeout=TIMEOUT) and started.acquire(timeout=TIMEOUT)
    (recorder,) = recorders
    seen = threading.Event()
    for event in (recorder.untimed_when_full, recorder.enough):  # whichever comes first
        threading.Thread(target=lambda e=event: e.wait(TIMEOUT) and seen.set()).start()
    assert seen.wait(TIMEOUT)
    slept, polls = recorder.untimed_when_full.is_set(), recorder.timed_when_full
    recorder.untimed_when_full.set()  # the other looking thread ends too
    recorder.enough.set()
    release.set()
    bus.drain(TIMEOUT)
    bus.close()
    assert slept, f"{polls} timed wake-ups with nothing to start"
