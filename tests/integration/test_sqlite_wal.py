"""Several processes (here: connections on threads) opening one new SQLite file at once:
the switch to WAL must wait its turn, not fail with "database is locked".
Without the retry (a plain `connect` + `PRAGMA journal_mode=WAL`) 0-4 of the 40 new files
failed to open in each of 8 tries here, so this test fails without it most of the time."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from shared.adapters.local.sqlite_wal import open_wal


def _open_at_once(path: Path, opener: Callable[[Path], sqlite3.Connection]) -> list[str]:
    barrier = threading.Barrier(8)
    errors: list[str] = []

    def open_one() -> None:
        barrier.wait()
        try:
            db = opener(path)
            db.execute("CREATE TABLE IF NOT EXISTS t (x)")
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                errors.append(f"journal mode {mode}")
            db.close()
        except sqlite3.Error as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_new_files_opened_at_once_all_open_in_wal(tmp_path: Path) -> None:
    errors = [e for i in range(40) for e in _open_at_once(tmp_path / f"{i}.db", open_wal)]
    assert errors == []
