"""Embedded runs belong to the process that drives them: the sweep of another process
never re-sends their tasks, and a run whose driver is gone ends as abandoned."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

from shared.core.control import end_abandoned, run_owner, sweep
from shared.core.runtime import Driver
from shared.messages import TOPIC_TASKS, Phase, RunStatus, TaskStatus
from tests.unit.test_control import System


def _dead_driver() -> Driver:
    """A driver whose process has exited (its pid is reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return Driver(pid=proc.pid, started=1.0, host=Driver.this_process().host)


def _tasks_sent(system: System, run_id: str) -> int:
    return sum(
        1 for topic, _, a in system.bus.published if topic == TOPIC_TASKS and a["run_id"] == run_id
    )


def test_a_dead_drivers_run_is_abandoned_by_the_sweep_not_re_sent() -> None:
    dead = System(driver=_dead_driver(), republish_after=1.0)
    run_id = dead.dispatch()
    dead.bus.queue.clear()  # the process died with its messages
    later = System(driver=Driver.this_process(), republish_after=1.0)
    later.store, later.rt.store = dead.store, dead.store
    later.clock.advance(3600)
    sent = _tasks_sent(later, run_id)

    report = sweep(later.rt)

    assert report.republished == [] and _tasks_sent(later, run_id) == sent
    run = later.store.get_run(run_id)
    assert run is not None and run.status is RunStatus.FAILED
    reason = f"abandoned: its archdeploy process (pid {dead.rt.driver.pid}) is gone"  # type: ignore[union-attr]
    assert run.error == reason
    assert all(t.status is TaskStatus.FAILED for t in later.store.get_tasks(run_id, Phase.BUILD))
    assert later.store.get_result(run_id).error == reason  # type: ignore[union-attr]


def test_a_live_drivers_run_is_left_alone_and_ours_is_swept() -> None:
    me = Driver.this_process()
    other = replace(me, pid=1, started=round(_start_of_pid_1(), 2))
    theirs = System(driver=other)
    run_id = theirs.dispatch()
    mine = System(driver=me)
    mine.store, mine.rt.store = theirs.store, theirs.store

    assert run_owner(theirs.store.get_run(run_id), mine.rt) == "other"  # type: ignore[arg-type]
    assert end_abandoned(mine.rt) == []
    assert sweep(mine.rt).runs == 0
    own = mine.dispatch()
    assert run_owner(mine.store.get_run(own), mine.rt) == "ours"  # type: ignore[arg-type]
    assert sweep(mine.rt).runs == 1


def test_on_google_cloud_every_run_without_a_driver_is_swept() -> None:
    cloud = System()
    run_id = cloud.dispatch()
    assert run_owner(cloud.store.get_run(run_id), cloud.rt) == "ours"  # type: ignore[arg-type]
    assert sweep(cloud.rt).runs == 1


def _start_of_pid_1() -> float:
    import psutil

    return psutil.Process(1).create_time()
