"""The project build cap's slots on this machine, shared by every state folder.

Embedded, each state folder has its own store, but the quota a build cap stands for (e.g.
Cloud Build's concurrent builds) belongs to the project: two `up`s of one project from
two folders must share it. So their slots live in one SQLite file per user (default
`$XDG_STATE_HOME/archdeploy/build-slots.db`, else `~/.local/state/...`; the setting
`ARCHDEPLOY_BUILD_SLOTS_FILE` moves it), taken under `BEGIN IMMEDIATE` like the store's.

Each slot records the process that took it (pid and kernel start time, as the local
Driver does for runs, and the host). A slot whose process has exited is free at once:
an `up` killed with `kill -9` does not keep the project's quota until the slot's lease
(the build deadline) runs out. A slot taken on another host (a home folder shared over
the network) is judged by its lease only.

Turns between processes: a process that asked for slots and got fewer than it wanted is
noted as waiting (since when; refreshed each time it asks, at least at every sweep). A
process asking for slots leaves one free for each live process that has waited longer,
so one whose builds keep ending cannot keep taking the slots they free while another
waits: the freed slot stays free until the waiting process's next sweep (within 5 s)
takes it. Within one process the core takes turns between runs itself
(`shared.core.quota`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from shared import store_rules as rules
from shared.adapters.local.processes import start_time
from shared.adapters.local.sqlite_wal import immediate, open_wal
from shared.errors import BackendError, UsageError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS build_slots (
    project_id TEXT NOT NULL,
    holder TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started INTEGER,
    host TEXT NOT NULL,
    PRIMARY KEY (project_id, holder)
);
CREATE TABLE IF NOT EXISTS slot_waiters (
    project_id TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started INTEGER,
    host TEXT NOT NULL,
    since TEXT NOT NULL,
    seen TEXT NOT NULL,
    PRIMARY KEY (project_id, pid, host)
);
"""

# A waiting process asks again at least at every sweep (5 s): one not heard from for
# this long no longer waits (its run ended, or it hangs), and holds nothing back.
WAITER_TTL = timedelta(seconds=30)

Owner = tuple[int, int | None, str]  # pid, kernel start time, host


def default_slots_file() -> Path:
    """Where this user's build slots are kept when the setting names no file."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "archdeploy" / "build-slots.db"


class MachineBuildSlots:
    """`shared.ports.BuildSlots` in one SQLite file for every process of this user."""

    def __init__(self, path: Path, *, owner: Owner | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        # This process; tests name another to play several processes in one.
        self._me = owner or (os.getpid(), start_time(os.getpid()), socket.gethostname())

    def build_slots(
        self,
        project_id: str,
        *,
        release: Sequence[str],
        want: Sequence[str],
        cap: int,
        lease_seconds: float,
        now: datetime,
    ) -> tuple[list[str], int]:
        with self._write() as db:
            rows = db.execute(
                "SELECT holder, expires_at, pid, started, host FROM build_slots"
                " WHERE project_id = ?",
                (project_id,),
            ).fetchall()
            owners = {holder: (pid, started, host) for holder, _, pid, started, host in rows}
            held = {
                holder: datetime.fromisoformat(at)
                for holder, at, *owner in rows
                if self._alive(owners[holder])
            }
            ahead = self._waiting_ahead(db, project_id, now)
            live, granted, freed = rules.slots_taken(
                held,
                release=release,
                want=want,
                cap=max(cap - ahead, 0),
                lease_seconds=lease_seconds,
                now=now,
            )
            db.execute("DELETE FROM build_slots WHERE project_id = ?", (project_id,))
            db.executemany(
                "INSERT INTO build_slots VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (project_id, holder, at.isoformat(), *owners.get(holder, self._me))
                    for holder, at in live.items()
                ],
            )
            if want:
                self._note_waiting(db, project_id, len(granted) < len(set(want)), now)
        return granted, freed

    def _waiting_ahead(self, db: sqlite3.Connection, project_id: str, now: datetime) -> int:
        """How many other processes have waited for a slot longer than this one: one free
        slot is left for each, so a process whose builds keep ending does not keep taking
        the slots they free (it takes its turn behind them)."""
        rows = db.execute(
            "SELECT pid, started, host, since, seen FROM slot_waiters WHERE project_id = ?",
            (project_id,),
        ).fetchall()
        mine = next((r[3] for r in rows if tuple(r[:3]) == self._me), None)
        return sum(
            1
            for pid, started, host, since, seen in rows
            if (pid, started, host) != self._me
            and self._alive((pid, started, host))
            and datetime.fromisoformat(seen) > now - WAITER_TTL
            and (mine is None or since < mine)
        )

    def _note_waiting(
        self, db: sqlite3.Connection, project_id: str, waiting: bool, now: datetime
    ) -> None:
        pid, started, host = self._me
        if not waiting:
            db.execute(
                "DELETE FROM slot_waiters WHERE project_id = ? AND pid = ? AND host = ?",
                (project_id, pid, host),
            )
            return
        db.execute(
            "INSERT INTO slot_waiters VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE"
            " SET seen = excluded.seen, since = CASE WHEN started IS excluded.started"
            " THEN since ELSE excluded.since END, started = excluded.started",
            (project_id, pid, started, host, now.isoformat(), now.isoformat()),
        )

    def close(self) -> None:
        """Close the file; this process waits for no slot any more."""
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute(
                        "DELETE FROM slot_waiters WHERE pid = ? AND host = ?",
                        (self._me[0], self._me[2]),
                    )
                self._db.close()
                self._db = None

    def _alive(self, owner: Owner) -> bool:
        """Whether the process that took a slot still runs (or is on another host)."""
        pid, started, host = owner
        if host != self._me[2] or (pid, started) == self._me[:2]:
            return True
        return start_time(pid) == started

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                with immediate(self._connect()) as db:
                    yield db
            except (sqlite3.Error, OSError) as exc:
                raise BackendError(f"build slots in {self.path}: {exc}", retryable=True) from exc

    def open(self) -> None:
        """Open the file now, before a run depends on it: one that cannot be opened (an
        unwritable folder, a file that is no SQLite database) is a `UsageError` naming the
        setting, rather than a handler that keeps failing mid-run."""
        with self._lock:
            try:
                self._connect().execute("SELECT count(*) FROM build_slots").fetchone()
            except (OSError, sqlite3.Error) as exc:
                raise UsageError(
                    f"build slots file {self.path}: {exc} (the project build cap keeps its "
                    "slots there: make its folder writable, or set "
                    "ARCHDEPLOY_BUILD_SLOTS_FILE to a file you can write)"
                ) from None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            db = open_wal(self.path)
            try:
                db.executescript(_SCHEMA)
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        return self._db
