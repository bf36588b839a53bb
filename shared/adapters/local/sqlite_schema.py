"""The embedded run store's tables, and the one-time changes to a file an older
archdeploy wrote (each in one write transaction, so two processes opening such a file
make the change once between them)."""

from __future__ import annotations

import sqlite3

from shared.adapters.local.sqlite_counts import ensure_counts
from shared.adapters.local.sqlite_wal import immediate

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    doc TEXT NOT NULL,
    architecture TEXT NOT NULL,
    result TEXT
);
CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    phase TEXT NOT NULL,
    status TEXT NOT NULL,
    doc TEXT NOT NULL
);
-- The waiting tasks of a phase in admission order (`waiting_tasks`). Partial: a task
-- leaves it when released, and claims and completions (never waiting) do not touch it.
CREATE INDEX IF NOT EXISTS tasks_waiting ON tasks (run_id, phase, json_extract(doc, '$.rank'))
    WHERE status = 'waiting';
CREATE TABLE IF NOT EXISTS durations (
    project_id TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS build_slots (
    project_id TEXT NOT NULL,
    holder TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (project_id, holder)
);
"""

# Served by the index `tasks_waiting` (the status literal and the expression must match it).
WAITING_SQL = (
    "SELECT task_id, doc FROM tasks WHERE run_id = ? AND phase = ? AND status = 'waiting'"
    " ORDER BY json_extract(doc, '$.rank'), rowid LIMIT ?"
)

# Before the counts were kept by triggers (`sqlite_counts.py`), tasks were counted through
# an index that held their status too. No query needs the status there now, and keeping
# it cost every claim and completion a third page in its commit (docs/performance.md,
# issue 19: the store).
_INDEX = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'tasks_by_phase'"
_INDEXED = (
    "CREATE INDEX IF NOT EXISTS tasks_by_phase ON tasks (run_id, phase)",
    "DROP INDEX IF EXISTS tasks_by_run",
)


def ensure_schema(db: sqlite3.Connection) -> None:
    """Create what a new file lacks; change what an older file holds, once."""
    db.executescript(SCHEMA)
    ensure_counts(db)
    if db.execute(_INDEX).fetchone():
        return
    with immediate(db):
        for statement in _INDEXED:
            db.execute(statement)
