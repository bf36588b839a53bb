"""The SQLite store's compare-and-sets (`sqlite_swaps.py`): one statement for a claim or
a completion of a task this process knows, group commit of concurrent threads' swaps
with each still decided on its own, and the same outcome across processes."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from shared import store_rules as rules
from shared.adapters.local.sqlite_store import SqliteRunStore
from shared.errors import BackendError
from shared.messages import Phase, TaskRecord, TaskStatus
from tests.integration.test_store_contract import NOW, _completion, _created, _tasks

TERMINAL = [s for s in TaskStatus if s.terminal]


def _statements(store: SqliteRunStore) -> list[str]:
    """The statements `store` runs from now on. SQLite traces a statement again for each
    trigger program it runs, so a repeat of the statement just seen is not counted."""
    seen: list[str] = []

    def trace(sql: str) -> None:
        if not seen or seen[-1] != sql:
            seen.append(sql)

    store._db.set_trace_callback(trace)
    return seen


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


@pytest.mark.parametrize("status", TERMINAL, ids=str)
def test_every_rule_that_can_refuse_refuses_a_terminal_task(status: TaskStatus) -> None:
    """The premise of answering a duplicate from a remembered terminal record."""
    task = _tasks("r", Phase.BUILD, ["api"], status)[0]
    assert rules.released(task, None, NOW) is None
    assert rules.claimed(task, "w", 60, NOW) is None
    assert rules.claimed(task, "w", 60, NOW + timedelta(days=9)) is None
    assert rules.completed(task, _completion(task)) is None
    assert rules.with_build_id(task, "b").status is status  # never refuses, keeps it ended


def test_a_claim_and_a_completion_are_one_statement_and_a_duplicate_none(tmp_path: Path) -> None:
    store = SqliteRunStore(tmp_path / "runs.db")
    try:
        run_id = _created(store, lambda r: _tasks(r, Phase.BUILD, ["api"]))
        task_id = store.release_tasks([(store.get_tasks(run_id)[0].task_id, {})], now=NOW)[0]
        seen = _statements(store)
        claimed = store.claim_task(task_id.task_id, worker="w", lease_seconds=60, now=NOW)
        assert claimed is not None and len(seen) == 1 and seen[0].startswith("UPDATE tasks")
        done = store.complete_task(_completion(claimed))
        assert done is not None and len(seen) == 2
        assert store.complete_task(_completion(claimed)) is None
        assert store.claim_task(task_id.task_id, worker="w", lease_seconds=60, now=NOW) is None
        assert len(seen) == 2  # refused from the remembered terminal record
        assert SqliteRunStore(tmp_path / "runs.db").get_task(task_id.task_id) == done
    finally:
        store.close()


def test_a_stale_remembered_record_is_read_again_and_decided_again(tmp_path: Path) -> None:
    ours, theirs = SqliteRunStore(tmp_path / "runs.db"), SqliteRunStore(tmp_path / "runs.db")
    try:
        run_id = _created(ours, lambda r: _tasks(r, Phase.BUILD, ["api"], TaskStatus.PENDING))
        task = ours.get_tasks(run_id)[0]  # remembered as pending
        assert theirs.claim_task(task.task_id, worker="them", lease_seconds=60, now=NOW)
        # From the remembered text our claim would win; the swap finds the text moved.
        assert ours.claim_task(task.task_id, worker="us", lease_seconds=60, now=NOW) is None
        later = NOW + timedelta(seconds=61)  # their lease expired: ours wins, attempt 2
        again = ours.claim_task(task.task_id, worker="us", lease_seconds=60, now=later)
        assert again is not None and (again.attempt, again.claimed_by) == (2, "us")
        assert theirs.get_task(task.task_id) == again
    finally:
        ours.close()
        theirs.close()


def test_a_release_from_a_stale_remembered_record_reads_and_decides_again(
    tmp_path: Path,
) -> None:
    ours, theirs = SqliteRunStore(tmp_path / "runs.db"), SqliteRunStore(tmp_path / "runs.db")
    try:
        run_id = _created(ours, lambda r: _tasks(r, Phase.BUILD, ["api", "web"]))
        api, web = ours.get_tasks(run_id)  # remembered as waiting, with no build id
        theirs.record_build_id(api.task_id, "b-1")  # still waiting, another text
        theirs.release_tasks([(web.task_id, {})], now=NOW)

        released = ours.release_tasks([(api.task_id, {}), (web.task_id, {})], now=NOW)

        assert [(t.task_id, t.build_id) for t in released] == [(api.task_id, "b-1")]
        assert theirs.get_task(api.task_id) == released[0]
    finally:
        ours.close()
        theirs.close()


def test_queued_swaps_are_committed_together_each_decided_on_its_own(tmp_path: Path) -> None:
    store = SqliteRunStore(tmp_path / "runs.db")
    try:
        names = [f"s{i}" for i in range(8)]
        run_id = _created(store, lambda r: _tasks(r, Phase.BUILD, names, TaskStatus.PENDING))
        ids = [t.task_id for t in store.get_tasks(run_id)]
        wanted = [*ids, ids[0], ids[0]]  # three threads race for the first task
        results: list[TaskRecord | None] = [None] * len(wanted)

        def claim(i: int) -> None:
            results[i] = store.claim_task(wanted[i], worker=f"w{i}", lease_seconds=60, now=NOW)

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(wanted))]
        with store._lock:  # hold the connection: every claim queues its swap
            for thread in threads:
                thread.start()
            _until(lambda: len(store._swaps._queued) == len(wanted), "the swaps to queue")
        for thread in threads:
            thread.join()

        assert store._swaps.largest_batch == len(wanted)
        won = [r for r in results if r is not None]
        assert sorted(r.task_id for r in won) == sorted(ids)  # the first task once only
        for record in won:
            assert store.get_task(record.task_id) == record
        assert store.count_tasks(run_id, Phase.BUILD) == {TaskStatus.RUNNING: len(ids)}
    finally:
        store.close()


def test_a_file_locked_past_the_timeout_is_a_retryable_error(tmp_path: Path) -> None:
    store = SqliteRunStore(tmp_path / "runs.db")
    other = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    try:
        run_id = _created(store, lambda r: _tasks(r, Phase.BUILD, ["api"], TaskStatus.PENDING))
        task_id = store.get_tasks(run_id)[0].task_id
        store._db.execute("PRAGMA busy_timeout = 50")
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(BackendError) as raised:
            store.claim_task(task_id, worker="w", lease_seconds=60, now=NOW)
        assert raised.value.retryable and "runs.db" in str(raised.value)
        other.execute("ROLLBACK")
        assert store.claim_task(task_id, worker="w", lease_seconds=60, now=NOW) is not None
    finally:
        other.close()
        store.close()


def _racer(path: str, ids: list[str], name: str, start: Any, out: Any) -> None:
    """One process: four threads claim then complete every task (spawned, importable)."""
    store = SqliteRunStore(path)
    claimed: list[TaskRecord] = []
    completed: list[str] = []

    def work(part: list[str]) -> None:
        for task_id in part:
            won = store.claim_task(task_id, worker=name, lease_seconds=600, now=NOW)
            if won is not None:
                claimed.append(won)
        for task_id in part:
            task = store.get_task(task_id)
            assert task is not None
            if store.complete_task(_completion(task).model_copy(update={"attempt": 1})):
                completed.append(task_id)

    start.wait()
    threads = [threading.Thread(target=work, args=(ids[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put((name, [t.task_id for t in claimed], completed))
    store.close()


def test_processes_racing_on_one_file_claim_and_complete_each_task_once(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = SqliteRunStore(path)
    names = [f"s{i}" for i in range(120)]
    run_id = _created(store, lambda r: _tasks(r, Phase.BUILD, names, TaskStatus.PENDING))
    ids = [t.task_id for t in store.get_tasks(run_id)]
    spawn = multiprocessing.get_context("spawn")
    start, out = spawn.Barrier(3), spawn.Queue()
    racers = [
        spawn.Process(target=_racer, args=(str(path), order, name, start, out))
        for name, order in (("p1", ids), ("p2", ids[::-1]), ("p3", ids[1::2] + ids[::2]))
    ]
    for racer in racers:
        racer.start()
    outcomes = [out.get(timeout=120) for _ in racers]
    for racer in racers:
        racer.join(timeout=60)
        assert racer.exitcode == 0

    claims = [task_id for _, won, _ in outcomes for task_id in won]
    completions = [task_id for _, _, done in outcomes for task_id in done]
    assert sorted(claims) == sorted(ids)  # every task claimed, none twice
    assert sorted(completions) == sorted(ids)  # every completion applied once
    for task in store.get_tasks(run_id):
        assert (task.status, task.attempt) == (TaskStatus.SUCCEEDED, 1)
        assert task.claimed_by == next(n for n, won, _ in outcomes if task.task_id in won)
    assert store.count_tasks(run_id, Phase.BUILD) == {TaskStatus.SUCCEEDED: len(ids)}
    store.close()
