"""Group commit of the task store's compare-and-sets (`SqliteRunStore._update_task`).

A claim or a completion is one `UPDATE ... WHERE task_id = ? AND doc = ?`: the write
applies only if the task's stored text is still the one its rule decided on. The swaps
of concurrent threads are queued, and whoever takes the connection's lock next applies
every queued swap in one transaction: one commit (one WAL append, one round of file
locks) for the lot, each swap still decided on its own by its `WHERE`, in queue order.
A lone swap runs as a single autocommit statement.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from shared.errors import BackendError
from shared.messages import TaskRecord

SWAP_SQL = "UPDATE tasks SET status = ?, doc = ? WHERE task_id = ? AND doc = ?"


class Swap:
    """One queued compare-and-set of a task's text."""

    __slots__ = ("doc", "done", "error", "expected", "task", "task_id", "won")

    def __init__(self, task_id: str, expected: str, task: TaskRecord) -> None:
        self.task_id, self.expected, self.task = task_id, expected, task
        self.doc = task.model_dump_json()
        self.won = self.done = False
        self.error: BackendError | None = None

    def args(self) -> tuple[str, str, str, str]:
        return (self.task.status.value, self.doc, self.task_id, self.expected)


class SwapQueue:
    """Swaps waiting for the connection; `lock` is the one every use of `db` holds."""

    def __init__(
        self,
        db: sqlite3.Connection,
        lock: threading.RLock,
        path: Path,
        won: Callable[[Swap], None],
    ) -> None:
        self._db, self._lock, self._path, self._won = db, lock, path, won
        self._queued_lock = threading.Lock()  # held for an append or a take only
        self._queued: list[Swap] = []
        self.largest_batch = 0  # the most swaps one commit has applied (for tests)

    def swap(self, task_id: str, expected: str, task: TaskRecord) -> bool:
        """Store `task` if the task's stored text is still `expected`; False if not.
        Raises a retryable `BackendError` if the file stayed locked past the timeout."""
        swap = Swap(task_id, expected, task)
        with self._queued_lock:
            self._queued.append(swap)
        with self._lock:
            if not swap.done:  # else an earlier holder of the lock applied it
                self._apply_queued()
        if swap.error is not None:
            raise swap.error
        return swap.won

    def _apply_queued(self) -> None:
        with self._queued_lock:
            batch, self._queued = self._queued, []
        together = len(batch) > 1
        self.largest_batch = max(self.largest_batch, len(batch))
        try:
            if together:
                self._db.execute("BEGIN IMMEDIATE")
            for swap in batch:
                swap.won = self._db.execute(SWAP_SQL, swap.args()).rowcount == 1
            if together:
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:  # locked past the timeout by another process
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            error = BackendError(f"run store {self._path}: {exc}", retryable=True)
            for swap in batch:
                swap.won, swap.error = False, error
        for swap in batch:
            swap.done = True
            if swap.won:
                self._won(swap)
