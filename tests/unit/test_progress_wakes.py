"""The progress view of an embedded `up` ends when the run does, not at its next tick."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from shared.cli.progress import _until_over
from shared.messages import Phase, RunResult, RunStatus


def test_the_view_is_read_again_as_soon_as_the_work_is_over() -> None:
    # Given a poll whose work ends (the event is set) while the view still says running
    over = threading.Event()
    now = datetime.now(UTC)
    running = RunResult(run_id="r-1", status=RunStatus.RUNNING, phase=Phase.BUILD, created_at=now)
    final = running.model_copy(update={"status": RunStatus.SUCCEEDED})
    polls: list[RunResult] = []

    def poll() -> tuple[RunResult | None, bool]:
        if not polls:
            over.set()
            polls.append(running)
            return running, False
        polls.append(final)
        return final, True

    # When the view follows with an hour between ticks
    answer: list[RunResult] = []
    follower = threading.Thread(
        target=lambda: answer.append(_until_over(poll, lambda _: None, 3600.0, over))
    )
    follower.start()
    follower.join(timeout=30)

    # Then it returned the final view without waiting for the tick
    assert not follower.is_alive()
    assert answer == [final] and len(polls) == 2
