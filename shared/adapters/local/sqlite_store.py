"""The embedded run store: one SQLite file under `.archdeploy/`.

WAL mode lets another process (`archdeploy status` in a second terminal) read while a
run writes. Within a process one connection is shared under a lock (SQLite serialises
writers anyway, and this avoids busy retries between threads); across processes every
compare-and-set is atomic: a task's as one `UPDATE ... WHERE` on its stored text
(`sqlite_swaps.py`), the others in a `BEGIN IMMEDIATE` transaction. The tables, and the
changes made once to a file an older archdeploy wrote, are in `sqlite_schema.py`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from shared import store_rules as rules
from shared.adapters.local.sqlite_counts import COUNT_SQL
from shared.adapters.local.sqlite_schema import WAITING_SQL, ensure_schema
from shared.adapters.local.sqlite_swaps import SWAP_SQL, SwapQueue
from shared.adapters.local.sqlite_wal import open_wal
from shared.errors import BackendError, UsageError
from shared.messages import (
    Phase,
    RunRecord,
    RunResult,
    TaskCompletion,
    TaskRecord,
    TaskStatus,
)

M = TypeVar("M", bound=BaseModel)

# Parsed task records kept per store (see `SqliteRunStore._task`); past this many the
# cache starts again, so a long-lived process holds a bounded number.
TASK_CACHE_SIZE = 50_000
RUN_CACHE_SIZE = 1_000


def _keep(cache: dict[str, tuple[str, M]], key: str, text: str, value: M, limit: int) -> None:
    """Remember `value` as what `text` parses to; past `limit` entries the cache starts
    again, so a long-lived process holds a bounded number."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = (text, value)


def _parse(path: Path, model: type[M], text: str) -> M:
    """A stored document; a corrupt one is a clear error naming the store and the fix."""
    try:
        return model.model_validate_json(text)
    except ValueError as exc:
        raise UsageError(_corrupt(path, f"{model.__name__}: {str(exc).splitlines()[0]}")) from None


def _corrupt(path: Path, what: str) -> str:
    return (
        f"run store {path} is corrupt ({what}): move the file away to start afresh "
        "(it holds run history only; running services are not affected)"
    )


class SqliteRunStore:
    """`RunStore` on SQLite; safe for threads of one process and for concurrent readers."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._db = open_wal(self.path)
            # A crash loses at most the last transactions, never consistency: fine for runs.
            self._db.execute("PRAGMA synchronous=NORMAL")
            ensure_schema(self._db)
            with suppress(OSError):
                self.path.chmod(0o600)  # runs hold architectures, which may be private
        except sqlite3.Error as exc:
            raise UsageError(
                f"cannot open the run store {self.path}: {exc} (check that you can write "
                f"to {self.path.parent}, or pass --state-dir DIR)"
            ) from exc
        self._lock = threading.RLock()
        self._swaps = SwapQueue(
            self._db, self._lock, self.path, lambda s: self._remember(s.task_id, s.doc, s.task)
        )
        self._parsed: dict[str, tuple[str, TaskRecord]] = {}
        self._runs: dict[str, tuple[str, RunRecord]] = {}
        self._results: dict[str, tuple[str, RunResult]] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()
            # The parsed records go now, not when the cyclic collector next finds this
            # store (its swap queue calls back into it): a full collection at the next
            # run's dispatch, 20,000 objects after a run of 1,000 services.
            self._parsed.clear()
            self._runs.clear()
            self._results.clear()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise BackendError(f"run store {self.path}: {exc}", retryable=True) from exc
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:
                # A stored document json_extract cannot read, or not a database at all.
                malformed = isinstance(exc, sqlite3.OperationalError) and "malformed" in str(exc)
                if malformed or type(exc) is sqlite3.DatabaseError:
                    raise UsageError(_corrupt(self.path, str(exc))) from None
                raise

    # --- runs ---------------------------------------------------------------------------

    def create_run(
        self, run: RunRecord, tasks: Sequence[TaskRecord], architecture: str
    ) -> tuple[RunRecord, bool]:
        with self._write() as db:
            row = db.execute("SELECT doc FROM runs WHERE run_id = ?", (run.run_id,)).fetchone()
            if row is not None:
                return _parse(self.path, RunRecord, row[0]), False
            db.execute(
                "INSERT INTO runs (run_id, created_at, doc, architecture) VALUES (?, ?, ?, ?)",
                (run.run_id, run.created_at.isoformat(), run.model_dump_json(), architecture),
            )
            docs = [t.model_dump_json() for t in tasks]
            db.executemany(
                "INSERT INTO tasks (task_id, run_id, phase, status, doc) VALUES (?, ?, ?, ?, ?)",
                [
                    (t.task_id, t.run_id, t.phase.value, t.status.value, doc)
                    for t, doc in zip(tasks, docs, strict=True)
                ],
            )
        for task, doc in zip(tasks, docs, strict=True):
            self._remember(task.task_id, doc, task)
        return run, True

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run as stored, parsed once per version of its text (a worker reads its
        run before every task; see `_task` for why a shared record is safe)."""
        rows = self._read("SELECT doc FROM runs WHERE run_id = ?", (run_id,))
        return self._cached(self._runs, run_id, rows[0][0], RunRecord) if rows else None

    def _cached(
        self,
        cache: dict[str, tuple[str, M]],
        key: str,
        text: str,
        model: type[M],
        limit: int = RUN_CACHE_SIZE,
    ) -> M:
        """`text` parsed as `model`, once per version of the text seen here."""
        hit = cache.get(key)
        if hit is not None and hit[0] == text:
            return hit[1]
        parsed = _parse(self.path, model, text)
        _keep(cache, key, text, parsed, limit)
        return parsed

    def list_runs(self, limit: int = 20) -> list[RunRecord]:
        rows = self._read("SELECT doc FROM runs ORDER BY created_at DESC LIMIT ?", (limit,))
        return [_parse(self.path, RunRecord, r[0]) for r in rows]

    def list_active_runs(self, limit: int = 500) -> list[RunRecord]:
        rows = self._read(
            "SELECT doc FROM runs WHERE json_extract(doc, '$.status') = 'running'"
            " ORDER BY created_at LIMIT ?",
            (limit,),
        )
        return [_parse(self.path, RunRecord, r[0]) for r in rows]

    def get_architecture(self, run_id: str) -> str | None:
        rows = self._read("SELECT architecture FROM runs WHERE run_id = ?", (run_id,))
        return rows[0][0] if rows else None

    def update_run(
        self, run_id: str, *, expect: Mapping[str, Any], changes: Mapping[str, Any]
    ) -> RunRecord | None:
        with self._write() as db:
            row = db.execute("SELECT doc FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            updated = rules.run_updated(_parse(self.path, RunRecord, row[0]), expect, changes)
            if updated is None:
                return None
            db.execute(
                "UPDATE runs SET doc = ? WHERE run_id = ?", (updated.model_dump_json(), run_id)
            )
            return updated

    def finish_run(self, run_id: str, result: RunResult) -> bool:
        text = result.model_dump_json()
        with self._write() as db:
            row = db.execute("SELECT doc FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                return False
            done = rules.run_finished(_parse(self.path, RunRecord, row[0]), result)
            if done is None:
                return False
            db.execute(
                "UPDATE runs SET doc = ?, result = ? WHERE run_id = ?",
                (done.model_dump_json(), text, run_id),
            )
        # Whoever waits for the run reads its result next: 1,000 services' result took
        # 14-17 ms to parse back, on the run's last step.
        _keep(self._results, run_id, text, result, RUN_CACHE_SIZE)
        return True

    def get_result(self, run_id: str) -> RunResult | None:
        rows = self._read("SELECT result FROM runs WHERE run_id = ?", (run_id,))
        if not rows or not rows[0][0]:
            return None
        return self._cached(self._results, run_id, rows[0][0], RunResult)

    # --- tasks --------------------------------------------------------------------------

    def _task(self, task_id: str, doc: str) -> TaskRecord:
        """The record stored as `doc`, parsed once per version of its text.

        The aggregator reads a whole phase at every step of a capped run (the waiting
        tasks and the number in flight must come from one read), so parsing every record
        each time cost O(tasks) per completion (docs/performance.md, issue 19). A record
        is parsed again only when its text differs from the last one seen here, whoever
        wrote it (another process too). Records are shared between callers, as the fake
        store shares its own: the core never changes one in place, only `model_copy`s."""
        return self._cached(self._parsed, task_id, doc, TaskRecord, TASK_CACHE_SIZE)

    def _remember(self, task_id: str, doc: str, task: TaskRecord) -> None:
        _keep(self._parsed, task_id, doc, task, TASK_CACHE_SIZE)

    def _store_task(self, db: sqlite3.Connection, task: TaskRecord) -> None:
        doc = task.model_dump_json()
        db.execute(
            "UPDATE tasks SET status = ?, doc = ? WHERE task_id = ?",
            (task.status.value, doc, task.task_id),
        )
        self._remember(task.task_id, doc, task)

    def get_task(self, task_id: str) -> TaskRecord | None:
        rows = self._read("SELECT doc FROM tasks WHERE task_id = ?", (task_id,))
        return self._task(task_id, rows[0][0]) if rows else None

    def get_tasks(self, run_id: str, phase: Phase | None = None) -> list[TaskRecord]:
        if phase is None:
            rows = self._read(
                "SELECT task_id, doc FROM tasks WHERE run_id = ? ORDER BY rowid", (run_id,)
            )
        else:
            rows = self._read(
                "SELECT task_id, doc FROM tasks WHERE run_id = ? AND phase = ? ORDER BY rowid",
                (run_id, phase.value),
            )
        return [self._task(task_id, doc) for task_id, doc in rows]

    def waiting_tasks(self, run_id: str, phase: Phase, limit: int) -> list[TaskRecord]:
        rows = self._read(WAITING_SQL, (run_id, phase.value, max(limit, 0)))
        return [self._task(task_id, doc) for task_id, doc in rows]

    def count_tasks(self, run_id: str, phase: Phase) -> dict[TaskStatus, int]:
        rows = self._read(COUNT_SQL, (run_id, phase.value))
        return {TaskStatus(status): n for status, n in rows}

    def release_task(
        self, task_id: str, *, spec_updates: Mapping[str, Any] | None = None, now: datetime
    ) -> TaskRecord | None:
        return self._update_task(task_id, lambda t: rules.released(t, spec_updates, now))

    def release_tasks(
        self, releases: Sequence[tuple[str, Mapping[str, Any]]], *, now: datetime
    ) -> list[TaskRecord]:
        released: list[TaskRecord] = []
        with self._write() as db:
            for task_id, updates in releases:
                won = self._released_in(db, task_id, updates, now)
                if won is not None:
                    released.append(won)
        return released

    def _released_in(
        self, db: sqlite3.Connection, task_id: str, updates: Mapping[str, Any], now: datetime
    ) -> TaskRecord | None:
        """One release inside the open write transaction: decided on the remembered text
        when it is still the stored one (one statement), else on the text read now."""
        known = self._parsed.get(task_id)
        won = rules.released(known[1], updates, now) if known is not None else None
        if known is not None and won is not None:
            doc = won.model_dump_json()
            if db.execute(SWAP_SQL, (won.status.value, doc, task_id, known[0])).rowcount:
                self._remember(task_id, doc, won)
                return won
        row = db.execute("SELECT doc FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        won = rules.released(self._task(task_id, row[0]), updates, now) if row else None
        if won is not None:
            self._store_task(db, won)
        return won

    def claim_task(
        self, task_id: str, *, worker: str, lease_seconds: float, now: datetime
    ) -> TaskRecord | None:
        return self._update_task(task_id, lambda t: rules.claimed(t, worker, lease_seconds, now))

    def record_build_id(self, task_id: str, build_id: str) -> None:
        self._update_task(task_id, lambda t: rules.with_build_id(t, build_id))

    def complete_task(self, completion: TaskCompletion) -> TaskRecord | None:
        return self._update_task(completion.task_id, lambda t: rules.completed(t, completion))

    def _update_task(
        self, task_id: str, change: Callable[[TaskRecord], TaskRecord | None]
    ) -> TaskRecord | None:
        """Apply `change` (a `store_rules` function) to the task as committed.

        Optimistic compare-and-set: `change` decides on a record, and the write applies
        only if the stored text is still that record's (`_swap`, one statement, atomic
        across processes); otherwise the task is read again and decided again. The first
        try starts from the last text this process saw, so a claim or completion of a task
        it released is one statement, with no read and no explicit transaction (the
        profile: docs/performance.md, issue 19, the store). A refusal is decided on a text
        read from the file, or on a remembered one whose task had ended: a terminal status
        never changes, and every rule that can refuse refuses a terminal task (a duplicate
        completion, most of what the aggregator sees, then costs no statement at all)."""
        known = self._parsed.get(task_id)
        if known is not None:
            updated = change(known[1])
            if updated is None and known[1].status.terminal:
                return None  # every later text is terminal too: the rule refuses it as well
            if updated is not None and self._swap(task_id, known[0], updated):
                return updated
        while True:
            rows = self._read("SELECT doc FROM tasks WHERE task_id = ?", (task_id,))
            if not rows:
                return None
            updated = change(self._task(task_id, rows[0][0]))
            if updated is None or self._swap(task_id, rows[0][0], updated):
                return updated

    def _swap(self, task_id: str, expected: str, task: TaskRecord) -> bool:
        return self._swaps.swap(task_id, expected, task)

    # --- what the scheduler keeps across runs ------------------------------------------

    def get_durations(self, project_id: str) -> dict[str, float]:
        rows = self._read("SELECT doc FROM durations WHERE project_id = ?", (project_id,))
        return {k: float(v) for k, v in json.loads(rows[0][0]).items()} if rows else {}

    def record_durations(self, project_id: str, samples: Mapping[str, float]) -> None:
        with self._write() as db:
            row = db.execute(
                "SELECT doc FROM durations WHERE project_id = ?", (project_id,)
            ).fetchone()
            updated = rules.durations_updated(json.loads(row[0]) if row else {}, samples)
            db.execute(
                "INSERT OR REPLACE INTO durations (project_id, doc) VALUES (?, ?)",
                (project_id, json.dumps(updated, sort_keys=True)),
            )

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
        # BEGIN IMMEDIATE: runs of other processes sharing this file wait their turn.
        with self._write() as db:
            rows = db.execute(
                "SELECT holder, expires_at FROM build_slots WHERE project_id = ?", (project_id,)
            ).fetchall()
            held = {holder: datetime.fromisoformat(at) for holder, at in rows}
            live, granted, freed = rules.slots_taken(
                held, release=release, want=want, cap=cap, lease_seconds=lease_seconds, now=now
            )
            db.execute("DELETE FROM build_slots WHERE project_id = ?", (project_id,))
            db.executemany(
                "INSERT INTO build_slots (project_id, holder, expires_at) VALUES (?, ?, ?)",
                [(project_id, holder, at.isoformat()) for holder, at in live.items()],
            )
        return granted, freed
