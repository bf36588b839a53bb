"""Task counts per run, phase and status, kept by SQLite triggers beside the tasks table.

The aggregator counts a phase's tasks at every step. `GROUP BY status` over the phase's
index entries cost O(tasks) per step (0.5-1 ms at 2,000 tasks: most of a completion's
cost, docs/performance.md, issue 19); the triggers make it a read of a few rows. They
run inside the transaction that changes the task, so the counts are exactly the tasks'.
"""

from __future__ import annotations

import sqlite3

from shared.adapters.local.sqlite_wal import immediate

_COUNTS = [
    """CREATE TABLE task_counts (
        run_id TEXT NOT NULL,
        phase TEXT NOT NULL,
        status TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (run_id, phase, status)
    ) WITHOUT ROWID""",
    """CREATE TRIGGER task_counted AFTER INSERT ON tasks BEGIN
        INSERT INTO task_counts (run_id, phase, status, n)
            VALUES (NEW.run_id, NEW.phase, NEW.status, 1)
            ON CONFLICT (run_id, phase, status) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER task_recounted AFTER UPDATE OF status ON tasks
        WHEN OLD.status IS NOT NEW.status BEGIN
        UPDATE task_counts SET n = n - 1
            WHERE run_id = OLD.run_id AND phase = OLD.phase AND status = OLD.status;
        INSERT INTO task_counts (run_id, phase, status, n)
            VALUES (NEW.run_id, NEW.phase, NEW.status, 1)
            ON CONFLICT (run_id, phase, status) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER task_uncounted AFTER DELETE ON tasks BEGIN
        UPDATE task_counts SET n = n - 1
            WHERE run_id = OLD.run_id AND phase = OLD.phase AND status = OLD.status;
    END""",
    # A file written before the counts existed: count what it holds, once.
    """INSERT INTO task_counts (run_id, phase, status, n)
        SELECT run_id, phase, status, COUNT(*) FROM tasks GROUP BY run_id, phase, status""",
]

COUNT_SQL = "SELECT status, n FROM task_counts WHERE run_id = ? AND phase = ? AND n > 0"


def ensure_counts(db: sqlite3.Connection) -> None:
    """Create the counts table and its triggers if this file has none yet, in one write
    transaction (so two processes opening an old file count it once between them)."""
    exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'task_counts'"
    if db.execute(exists).fetchone():
        return
    with immediate(db):
        if not db.execute(exists).fetchone():
            for statement in _COUNTS:
                db.execute(statement)
