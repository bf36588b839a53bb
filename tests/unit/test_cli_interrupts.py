"""A Ctrl-C's cancel runs in a thread of its own: the run must be waited for again once it
has published, and the bus must not be closed under it (issue seen as a rare failure of
tests/hostile/test_release_hostile.py::test_ctrl_c_mid_promote_puts_traffic_back)."""

from __future__ import annotations

import signal
import threading

from shared.cli.local import Interrupts, _wait


def test_the_wait_goes_on_for_what_the_cancel_published() -> None:
    release = threading.Event()
    published: list[str] = []
    waits: list[list[str]] = []

    def cancel() -> None:
        release.wait(10)
        published.append("revert")

    class System:
        def wait(self, run_id: str) -> None:
            waits.append(list(published))
            release.set()  # the bus went idle before the cancel published anything

    interrupts = Interrupts(cancel, say=lambda _: None)
    interrupts._handle(signal.SIGINT, None)
    over = threading.Event()
    _wait(System(), "run-1", lambda _: None, over, interrupts)
    assert waits == [[], ["revert"]]
    assert over.is_set()


def test_leaving_waits_for_a_cancel_still_going() -> None:
    release = threading.Event()
    published: list[str] = []

    def cancel() -> None:
        release.wait(10)
        published.append("revert")

    with Interrupts(cancel, say=lambda _: None) as interrupts:
        interrupts._handle(signal.SIGINT, None)
        threading.Timer(0.05, release.set).start()
    assert published == ["revert"]  # the caller closes the bus only after this
    assert interrupts.cancel_settled() is False  # waited for once, not twice
