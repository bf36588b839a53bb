"""`FirestoreRunStore`: the run store on Cloud Firestore (Native mode).

Layout, for a collection `C` (default `archdeploy_runs`)::

    C/{run_id}                          the RunRecord: written at create, phase changes, finish
    C/{run_id}/tasks/{task_id}          one TaskRecord per task (`{run_id}:{phase}:{service}`)
    C/{run_id}/meta/architecture[-N]    the architecture text, as bytes in <= 900 KB chunks
    C/{run_id}/meta/result[-N]          the final RunResult's JSON, chunked the same way
    C_durations/..., C_slots/...        what the scheduler keeps (`firestore_scheduling`)

Why: Firestore sustains about one write per second per document. A run of 500 services
whose builds finish together must not queue on one document, so every claim and
completion writes only its own task document, and the run document changes only when
the run is created, moves phase, or finishes. A document holds at most 1 MiB; the
architecture may be that large, and a 500-service result with long error texts may be
larger, so both are stored as bytes split across `name`, `name-1`, `name-2`, ... (the
first chunk records how many there are).

Every write is a compare-and-set, deciding with the pure rules in `shared.store_rules`
(the same ones the SQLite store and the fake apply):

- one document (claim, release, complete, build id, `update_run`): read it, then write
  with an `update_time` precondition; if someone wrote in between, read again and retry.
- several documents (`create_run`, `finish_run`): a read-write transaction that reads
  the run document first, so exactly one caller creates or finishes a run.

`count_tasks` issues one aggregation `count()` per status, in parallel, all at the read
time of the first answer (one consistent snapshot). A count is billed as one read per
1,000 index entries, so the aggregator can count after every completion of a 500-task
phase for ~8 reads, where fetching even a projected `status` field would read 500
documents each time. The queries use equality filters only (`phase`, `status`), which
Firestore serves from its automatic single-field indexes: no composite index to deploy.
`list_runs` orders by `created_at` (a Firestore timestamp), also a single-field index.

Datetimes are stored as Firestore timestamps and come back timezone-aware in UTC.
A `create_run` is one commit, limited to 10 MiB: about a thousand tasks plus a 1 MiB
architecture fit comfortably.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel

from shared import store_rules as rules
from shared.adapters.gcp.firestore_scheduling import FirestoreScheduling
from shared.adapters.gcp.retry import is_transient
from shared.errors import BackendError
from shared.messages import (
    Phase,
    RunRecord,
    RunResult,
    TaskCompletion,
    TaskRecord,
    TaskStatus,
)

logger = logging.getLogger(__name__)

CHUNK_BYTES = 900_000
CAS_ATTEMPTS = 20
TRANSACTION_ATTEMPTS = 5
CONTENTION_ROUNDS = 6

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class FirestoreRunStore(FirestoreScheduling):
    """`RunStore` on Firestore; safe for any number of threads and processes."""

    def __init__(
        self,
        *,
        project_id: str,
        database: str = "(default)",
        collection: str = "archdeploy_runs",
        client: Any = None,
    ) -> None:
        self.project_id = project_id
        self.database = database
        self.collection = collection
        self._client = client
        self._owns_client = client is None

    def close(self) -> None:
        """Close a client this store created; one passed in is left to its owner."""
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None

    # --- runs ---------------------------------------------------------------------------

    def create_run(
        self, run: RunRecord, tasks: Sequence[TaskRecord], architecture: str
    ) -> tuple[RunRecord, bool]:
        for task in tasks:
            if _run_id_of(task.task_id) != run.run_id:
                raise BackendError(f"task {task.task_id!r} does not belong to run {run.run_id!r}")
        run_ref = self._run_ref(run.run_id)

        def create(tx: Any) -> tuple[RunRecord, bool]:
            snapshot = run_ref.get(transaction=tx)
            if snapshot.exists:
                return _model(RunRecord, snapshot), False
            tx.create(run_ref, _to_doc(run))
            for task in tasks:
                tx.set(self._task_ref(task.task_id), _to_doc(task))
            for ref, doc in self._blob_docs(run.run_id, "architecture", architecture.encode()):
                tx.set(ref, doc)
            return run, True

        return self._transact(f"creating run {run.run_id}", create)

    def get_run(self, run_id: str) -> RunRecord | None:
        with _translated(f"reading run {run_id}"):
            snapshot = self._run_ref(run_id).get()
        return _model(RunRecord, snapshot) if snapshot.exists else None

    def list_runs(self, limit: int = 20) -> list[RunRecord]:
        query = (
            self._db().collection(self.collection).order_by("created_at", direction="DESCENDING")
        )
        with _translated(f"listing runs in {self.collection}"):
            return [_model(RunRecord, s) for s in query.limit(limit).stream()]

    def list_active_runs(self, limit: int = 500) -> list[RunRecord]:
        # Equality filter only: no composite index is needed; sorted here instead.
        query = self._db().collection(self.collection).where(filter=_equals("status", "running"))
        with _translated(f"listing active runs in {self.collection}"):
            runs = [_model(RunRecord, s) for s in query.limit(limit).stream()]
        return sorted(runs, key=lambda r: r.created_at)

    def get_architecture(self, run_id: str) -> str | None:
        data = self._read_blob(run_id, "architecture")
        return None if data is None else data.decode()

    def update_run(
        self, run_id: str, *, expect: Mapping[str, Any], changes: Mapping[str, Any]
    ) -> RunRecord | None:
        return self._compare_and_set(
            self._run_ref(run_id), RunRecord, lambda r: rules.run_updated(r, expect, changes)
        )

    def finish_run(self, run_id: str, result: RunResult) -> bool:
        run_ref = self._run_ref(run_id)
        current = self.get_run(run_id)
        if current is None or current.status.terminal:
            return False  # most racing aggregators stop here, without a transaction
        blobs = self._blob_docs(run_id, "result", result.model_dump_json().encode())

        def finish(tx: Any) -> bool:
            snapshot = run_ref.get(transaction=tx)
            if not snapshot.exists:
                return False
            current = _model(RunRecord, snapshot)
            done = rules.run_finished(current, result)
            if done is None:
                return False
            tx.update(run_ref, _changed_fields(current, done))
            for ref, doc in blobs:
                tx.set(ref, doc)
            return True

        finished = self._transact(f"finishing run {run_id}", finish)
        if finished:
            logger.info("run %s finished: %s", run_id, result.status.value)
        return finished

    def get_result(self, run_id: str) -> RunResult | None:
        data = self._read_blob(run_id, "result")
        return None if data is None else RunResult.model_validate_json(data)

    # --- tasks --------------------------------------------------------------------------

    def get_task(self, task_id: str) -> TaskRecord | None:
        with _translated(f"reading task {task_id}"):
            snapshot = self._task_ref(task_id).get()
        return _model(TaskRecord, snapshot) if snapshot.exists else None

    def get_tasks(self, run_id: str, phase: Phase | None = None) -> list[TaskRecord]:
        query = self._tasks(run_id)
        if phase is not None:
            query = query.where(filter=_equals("phase", phase.value))
        with _translated(f"reading the tasks of run {run_id}"):
            return [_model(TaskRecord, s) for s in query.stream()]

    def count_tasks(self, run_id: str, phase: Phase) -> dict[TaskStatus, int]:
        of_phase = self._tasks(run_id).where(filter=_equals("phase", phase.value))

        def count(status: TaskStatus, read_time: datetime | None = None) -> tuple[int, datetime]:
            query = of_phase.where(filter=_equals("status", status.value)).count(alias="n")
            [[result]] = query.get(read_time=read_time)
            return int(result.value), result.read_time

        first, *others = list(TaskStatus)
        with _translated(f"counting the {phase.value} tasks of run {run_id}"):
            counted, read_time = count(first)
            with ThreadPoolExecutor(len(others)) as pool:
                rest = list(pool.map(lambda s: count(s, read_time)[0], others))
        counts = dict(zip([first, *others], [counted, *rest], strict=True))
        return {status: n for status, n in counts.items() if n}

    def release_task(
        self, task_id: str, *, spec_updates: Mapping[str, Any] | None = None, now: datetime
    ) -> TaskRecord | None:
        return self._update_task(task_id, lambda t: rules.released(t, spec_updates, now))

    def release_tasks(
        self, releases: Sequence[tuple[str, Mapping[str, Any]]], *, now: datetime
    ) -> list[TaskRecord]:
        # One document each, so no transaction is needed: the compare-and-sets run side by
        # side (a batch would fail whole on one lost precondition).
        def one(item: tuple[str, Mapping[str, Any]]) -> TaskRecord | None:
            return self.release_task(item[0], spec_updates=item[1], now=now)

        with ThreadPoolExecutor(max_workers=16) as pool:
            return [won for won in pool.map(one, releases) if won is not None]

    def claim_task(
        self, task_id: str, *, worker: str, lease_seconds: float, now: datetime
    ) -> TaskRecord | None:
        return self._update_task(task_id, lambda t: rules.claimed(t, worker, lease_seconds, now))

    def record_build_id(self, task_id: str, build_id: str) -> None:
        self._update_task(task_id, lambda t: rules.with_build_id(t, build_id))

    def complete_task(self, completion: TaskCompletion) -> TaskRecord | None:
        return self._update_task(completion.task_id, lambda t: rules.completed(t, completion))

    # --- plumbing -----------------------------------------------------------------------

    def _db(self) -> Any:
        if self._client is None:
            from google.cloud import firestore

            self._client = firestore.Client(project=self.project_id, database=self.database)
        return self._client

    def _run_ref(self, run_id: str) -> Any:
        return self._db().collection(self.collection).document(run_id)

    def _tasks(self, run_id: str) -> Any:
        return self._run_ref(run_id).collection("tasks")

    def _task_ref(self, task_id: str) -> Any:
        return self._tasks(_run_id_of(task_id)).document(task_id)

    def _update_task(
        self, task_id: str, change: Callable[[TaskRecord], TaskRecord | None]
    ) -> TaskRecord | None:
        return self._compare_and_set(self._task_ref(task_id), TaskRecord, change)

    def _compare_and_set(
        self, ref: Any, model: type[M], change: Callable[[M], M | None]
    ) -> M | None:
        """Read one document, decide, and write only if nobody wrote it in between."""
        from google.api_core import exceptions as gexc

        action = f"updating {ref.path}"
        with _translated(action):
            for _ in range(CAS_ATTEMPTS):
                snapshot = ref.get()
                if not snapshot.exists:
                    return None
                current = _model(model, snapshot)
                updated = change(current)
                if updated is None:
                    return None
                precondition = self._db().write_option(last_update_time=snapshot.update_time)
                try:
                    ref.update(_changed_fields(current, updated), option=precondition)
                except gexc.FailedPrecondition:
                    logger.debug("%s: written concurrently, reading it again", ref.path)
                    continue
                except gexc.NotFound:
                    return None
                return updated
        raise BackendError(
            f"{action}: it kept changing under us ({CAS_ATTEMPTS} tries)", retryable=True
        )

    def _transact(self, action: str, body: Callable[[Any], T]) -> T:
        from google.api_core import exceptions as gexc
        from google.cloud import firestore

        # The client retries an aborted transaction at once; under contention (several
        # aggregators finishing one run) that can livelock, so rounds back off with jitter.
        for round_ in range(1, CONTENTION_ROUNDS + 1):
            transaction = self._db().transaction(max_attempts=TRANSACTION_ATTEMPTS)
            with _translated(action):
                try:
                    result: T = firestore.transactional(body)(transaction)
                    return result
                except ValueError as exc:
                    if not isinstance(exc.__cause__, gexc.Aborted):
                        raise
                    if round_ == CONTENTION_ROUNDS:
                        message = f"{action}: {exc} (contention)"
                        raise BackendError(message, retryable=True) from exc
            time.sleep(random.uniform(0.01, 0.05) * round_)
        raise AssertionError("unreachable")

    def _blob_docs(self, run_id: str, name: str, data: bytes) -> list[tuple[Any, dict[str, Any]]]:
        meta = self._run_ref(run_id).collection("meta")
        parts = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
        docs: list[tuple[Any, dict[str, Any]]] = [
            (meta.document(name), {"data": parts[0], "chunks": len(parts), "bytes": len(data)})
        ]
        docs += [(meta.document(f"{name}-{i}"), {"data": p}) for i, p in enumerate(parts) if i]
        return docs

    def _read_blob(self, run_id: str, name: str) -> bytes | None:
        meta = self._run_ref(run_id).collection("meta")
        with _translated(f"reading {name} of run {run_id}"):
            head = meta.document(name).get()
            if not head.exists:
                return None
            refs = [meta.document(f"{name}-{i}") for i in range(1, head.get("chunks"))]
            rest = {s.id: s.get("data") for s in self._db().get_all(refs)} if refs else {}
        missing = [ref.id for ref in refs if ref.id not in rest]
        if missing:
            raise BackendError(f"reading {name} of run {run_id}: chunks {missing} are missing")
        return bytes(head.get("data")) + b"".join(bytes(rest[ref.id]) for ref in refs)


def _run_id_of(task_id: str) -> str:
    return task_id.split(":", 1)[0]


def _equals(field: str, value: str) -> Any:
    from google.cloud.firestore_v1.base_query import FieldFilter

    return FieldFilter(field, "==", value)


def _to_doc(model: BaseModel) -> dict[str, Any]:
    """JSON-mode fields, except datetimes, which become Firestore timestamps (UTC)."""
    doc: dict[str, Any] = model.model_dump(mode="json")
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, datetime):
            doc[name] = value if value.tzinfo else value.replace(tzinfo=UTC)
    return doc


def _model(model: type[M], snapshot: Any) -> M:
    doc = snapshot.to_dict()
    for name, value in doc.items():
        if isinstance(value, datetime):  # the SDK's DatetimeWithNanoseconds -> datetime
            doc[name] = datetime(
                *value.timetuple()[:6], value.microsecond, tzinfo=value.tzinfo or UTC
            )
    return model.model_validate(doc)


def _changed_fields(current: BaseModel, updated: BaseModel) -> dict[str, Any]:
    before, after = _to_doc(current), _to_doc(updated)
    return {name: value for name, value in after.items() if before.get(name) != value} or after


@contextmanager
def _translated(action: str) -> Iterator[None]:
    """Turn google.api_core errors into `BackendError`, retryable when transient."""
    from google.api_core import exceptions as gexc

    try:
        yield
    except gexc.RetryError as exc:
        raise BackendError(f"{action}: gave up retrying: {exc.message}", retryable=True) from exc
    except gexc.GoogleAPICallError as exc:
        raise BackendError(f"{action}: {exc}", retryable=is_transient(exc)) from exc
