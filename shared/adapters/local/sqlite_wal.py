"""SQLite files other processes open and write too: opening one in WAL mode, and the
write transaction every compare-and-set on one runs in (`immediate`).

Switching a new file to WAL needs an exclusive lock, and SQLite answers SQLITE_BUSY
("database is locked") at once rather than through the busy handler when another
connection holds one (https://www.sqlite.org/wal.html, "Activating And Configuring WAL
Mode"; seen here as a rare failure of six threads opening one build-slots file at once).
So the switch is retried until `timeout`, as the busy handler would have waited.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def open_wal(path: Path, timeout: float = 30.0) -> sqlite3.Connection:
    """A connection to `path` in WAL mode, autocommit, usable from any thread."""
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    give_up = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return db
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                db.close()
                raise
            if time.monotonic() + pause > give_up:
                db.close()
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction on `db` (autocommit mode), its lock taken at `BEGIN` so the
    reads inside see what no other process can change before `COMMIT`; rolled back if
    the enclosed block raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
