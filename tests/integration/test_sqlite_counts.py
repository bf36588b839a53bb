"""The SQLite store's task counts (kept by triggers) always equal a count of the tasks,
including in a file written before the counts existed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from shared.adapters.local.sqlite_store import SqliteRunStore
from shared.messages import Phase, TaskStatus
from tests.integration.test_store_contract import NOW, _completion, _created, _tasks

GROUPED = "SELECT run_id, phase, status, COUNT(*) FROM tasks GROUP BY run_id, phase, status"
KEPT = "SELECT run_id, phase, status, n FROM task_counts WHERE n > 0"


def _grouped(path: Path, sql: str) -> set[tuple[str, str, str, int]]:
    with sqlite3.connect(path) as db:
        return set(db.execute(sql).fetchall())


def test_counts_follow_every_transition(tmp_path: Path) -> None:
    store = SqliteRunStore(tmp_path / "runs.db")
    try:
        run_id = _created(store, lambda r: _tasks(r, Phase.BUILD, ["a", "b", "c", "d"]))
        tasks = store.get_tasks(run_id, Phase.BUILD)
        store.release_tasks([(t.task_id, {}) for t in tasks[:3]], now=NOW)
        store.claim_task(tasks[0].task_id, worker="w", lease_seconds=60, now=NOW)
        store.claim_task(tasks[1].task_id, worker="w", lease_seconds=60, now=NOW)
        claimed = store.get_task(tasks[0].task_id)
        assert claimed is not None
        store.complete_task(_completion(claimed))
        store.complete_task(_completion(claimed))  # a duplicate changes nothing
        assert store.count_tasks(run_id, Phase.BUILD) == {
            TaskStatus.SUCCEEDED: 1,
            TaskStatus.RUNNING: 1,
            TaskStatus.PENDING: 1,
            TaskStatus.WAITING: 1,
        }
    finally:
        store.close()
    assert _grouped(tmp_path / "runs.db", KEPT) == _grouped(tmp_path / "runs.db", GROUPED)


def test_a_file_from_before_the_counts_is_counted_once_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = SqliteRunStore(path)
    run_id = _created(store, lambda r: _tasks(r, Phase.DEPLOY, ["a", "b", "c"]))
    store.release_tasks([(store.get_tasks(run_id)[0].task_id, {})], now=NOW)
    store.close()
    with sqlite3.connect(path) as db:  # as an older archdeploy left it
        db.executescript(
            "DROP TRIGGER task_counted; DROP TRIGGER task_recounted;"
            "DROP TRIGGER task_uncounted; DROP TABLE task_counts;"
        )

    first, second = SqliteRunStore(path), SqliteRunStore(path)
    try:
        expected = {TaskStatus.PENDING: 1, TaskStatus.WAITING: 2}
        assert first.count_tasks(run_id, Phase.DEPLOY) == expected
        assert second.count_tasks(run_id, Phase.DEPLOY) == expected
    finally:
        first.close()
        second.close()
