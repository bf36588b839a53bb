"""A store file an older archdeploy wrote opens and works: its task index (which held
the status, costing every claim a page) is replaced once, in one transaction."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from shared.adapters.local.sqlite_schema import WAITING_SQL
from shared.adapters.local.sqlite_store import SqliteRunStore
from shared.messages import Phase, TaskStatus, task_id_for
from tests.integration.test_store_contract import NOW, _completion, _created, _tasks

INDEXES = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks'"
PLAN = "EXPLAIN QUERY PLAN SELECT task_id, doc FROM tasks WHERE run_id = ? AND phase = ?"


def _indexes(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        return {name: sql for name, sql in db.execute(INDEXES) if sql}


def test_an_older_file_gets_the_new_index_once_and_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = SqliteRunStore(path)
    run_id = _created(store, lambda r: _tasks(r, Phase.BUILD, ["a", "b", "c"]))
    store.close()
    with sqlite3.connect(path) as db:  # as the previous archdeploy left it
        db.executescript(
            "DROP INDEX tasks_by_phase;CREATE INDEX tasks_by_run ON tasks (run_id, phase, status);"
        )

    first, second = SqliteRunStore(path), SqliteRunStore(path)
    try:
        indexes = _indexes(path)
        assert "tasks_by_run" not in indexes
        assert indexes["tasks_by_phase"].endswith("(run_id, phase)")
        plan = " ".join(str(row) for row in first._db.execute(PLAN, (run_id, "build")))
        assert "tasks_by_phase" in plan

        tasks = second.get_tasks(run_id, Phase.BUILD)
        assert [t.service for t in tasks] == ["a", "b", "c"]  # in file order still
        released = first.release_tasks([(tasks[0].task_id, {})], now=NOW)
        claimed = second.claim_task(released[0].task_id, worker="w", lease_seconds=9, now=NOW)
        assert claimed is not None
        assert first.complete_task(_completion(claimed)) is not None
        assert second.count_tasks(run_id, Phase.BUILD) == {
            TaskStatus.SUCCEEDED: 1,
            TaskStatus.WAITING: 2,
        }
    finally:
        first.close()
        second.close()


def test_a_new_file_has_the_index_from_the_start(tmp_path: Path) -> None:
    SqliteRunStore(tmp_path / "runs.db").close()
    assert set(_indexes(tmp_path / "runs.db")) == {"tasks_by_phase", "tasks_waiting"}


def test_an_older_file_gets_the_waiting_index_and_reads_waiting_tasks_through_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    store = SqliteRunStore(path)
    run_id = _created(store, lambda r: _tasks(r, Phase.BUILD, ["a", "b", "c"]))
    store.close()
    with sqlite3.connect(path) as db:  # as the previous archdeploy left it
        db.execute("DROP INDEX tasks_waiting")

    first, second = SqliteRunStore(path), SqliteRunStore(path)
    try:
        assert "WHERE status = 'waiting'" in _indexes(path)["tasks_waiting"]
        plan = first._db.execute("EXPLAIN QUERY PLAN " + WAITING_SQL, (run_id, "build", 2))
        assert "USING INDEX tasks_waiting" in " ".join(str(row) for row in plan)
        assert "TEMP B-TREE" not in " ".join(str(row) for row in plan)  # sorted by the index

        first.release_tasks([(task_id_for(run_id, Phase.BUILD, "a"), {})], now=NOW)
        waiting = second.waiting_tasks(run_id, Phase.BUILD, 5)
        assert [t.service for t in waiting] == ["b", "c"]
    finally:
        first.close()
        second.close()
