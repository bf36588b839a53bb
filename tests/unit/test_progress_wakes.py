"""The progress view of an embedded `up` ends when the run does, not at its next tick."""

from __future__ import annotations

import io
import threading
from datetime import UTC, datetime

import pytest
from rich.console import Console

from shared.cli.progress import _until_over, result_table
from shared.messages import Phase, RunResult, RunStatus, ServiceResult


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


@pytest.mark.parametrize("status", ["waiting", "some status without a style"])
def test_the_result_table_shows_any_status_even_one_without_a_style(status: str) -> None:
    """An unfinished run's table (a build waiting for the project's slots) once crashed:
    a status without a style became the empty markup tag `[]`."""
    result = RunResult(
        run_id="r-1",
        status=RunStatus.RUNNING,
        phase=Phase.BUILD,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        services={"b1": ServiceResult(service="b1", dataflow="main", status=status)},
    )
    console = Console(file=io.StringIO(), width=200)
    console.print(result_table(result))
    output = console.file
    assert isinstance(output, io.StringIO) and status in output.getvalue()
