"""FirestoreRunStore's layout on the emulator: what lands in which document."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from shared.adapters.gcp.firestore_store import CHUNK_BYTES, FirestoreRunStore, _translated
from shared.errors import BackendError
from shared.messages import (
    Phase,
    RunRecord,
    RunResult,
    RunStatus,
    TaskCompletion,
    TaskRecord,
    TaskStatus,
    task_id_for,
)
from tests.integration.emulators import Emulator

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(firestore_client: Any) -> FirestoreRunStore:
    collection = f"runs-{uuid.uuid4().hex[:12]}"
    return FirestoreRunStore(
        project_id=firestore_client.project, collection=collection, client=firestore_client
    )


def _run() -> RunRecord:
    return RunRecord(run_id=uuid.uuid4().hex[:16], idempotency_key="k", created_at=NOW)


def _task(run_id: str, service: str, status: TaskStatus = TaskStatus.PENDING) -> TaskRecord:
    task_id = task_id_for(run_id, Phase.BUILD, service)
    return TaskRecord(
        task_id=task_id, run_id=run_id, phase=Phase.BUILD, service=service, status=status
    )


def _done(task: TaskRecord) -> TaskCompletion:
    return TaskCompletion(
        run_id=task.run_id,
        task_id=task.task_id,
        phase=task.phase,
        service=task.service,
        status=TaskStatus.SUCCEEDED,
        image=f"registry.example/{task.service}:1",
    )


def _run_doc(store: FirestoreRunStore, run_id: str) -> Any:
    return store._run_ref(run_id).get()


def test_500_completions_land_in_500_task_documents_and_leave_the_run_document_alone(
    store: FirestoreRunStore,
) -> None:
    # Given a run of 500 build tasks
    run = _run()
    tasks = [_task(run.run_id, f"svc-{i:03d}") for i in range(500)]
    store.create_run(run, tasks, "name: big\n")
    created = _run_doc(store, run.run_id).update_time

    # When every task completes, 16 at a time
    with ThreadPoolExecutor(16) as pool:
        applied = list(pool.map(lambda t: store.complete_task(_done(t)), tasks))

    # Then each completion wrote its own task document, and not the run document
    assert all(record is not None for record in applied)
    docs = list(store._tasks(run.run_id).stream())
    assert len({doc.id for doc in docs}) == 500
    assert {doc.get("status") for doc in docs} == {"succeeded"}
    assert all(doc.update_time > doc.create_time for doc in docs)
    assert _run_doc(store, run.run_id).update_time == created
    assert store.count_tasks(run.run_id, Phase.BUILD) == {TaskStatus.SUCCEEDED: 500}

    # And finishing the run is what moves the run document
    result = RunResult(
        run_id=run.run_id, status=RunStatus.SUCCEEDED, phase=Phase.BUILD, created_at=NOW
    )
    assert store.finish_run(run.run_id, result)
    assert _run_doc(store, run.run_id).update_time > created


def test_a_large_architecture_is_split_across_chunk_documents(store: FirestoreRunStore) -> None:
    run = _run()
    text = "# ünïcödé architecture 🚀\n" * 80_000  # multi-byte UTF-8, split mid-character
    size = len(text.encode())
    chunks = -(-size // CHUNK_BYTES)
    assert chunks >= 3

    store.create_run(run, [], text)

    meta = {doc.id: doc for doc in store._run_ref(run.run_id).collection("meta").stream()}
    assert sorted(meta) == ["architecture"] + [f"architecture-{i}" for i in range(1, chunks)]
    assert meta["architecture"].get("chunks") == chunks
    assert meta["architecture"].get("bytes") == size
    assert all(len(doc.get("data")) <= CHUNK_BYTES for doc in meta.values())
    assert store.get_architecture(run.run_id) == text


def test_datetimes_are_stored_as_timestamps_and_read_back_as_utc(
    store: FirestoreRunStore,
) -> None:
    run = _run()
    store.create_run(run, [_task(run.run_id, "api")], "x: 1\n")
    task_id = task_id_for(run.run_id, Phase.BUILD, "api")
    store.claim_task(task_id, worker="w", lease_seconds=90, now=NOW)

    raw = store._task_ref(task_id).get().to_dict()
    task = store.get_task(task_id)

    assert isinstance(raw["lease_expires_at"], datetime)
    assert raw["status"] == "running"
    assert task is not None
    assert task.lease_expires_at == NOW + timedelta(seconds=90)
    assert task.lease_expires_at.tzinfo is not None
    assert task.lease_expires_at.utcoffset() == timedelta(0)
    assert isinstance(_run_doc(store, run.run_id).get("created_at"), datetime)


def test_a_task_of_another_run_is_refused_at_create(store: FirestoreRunStore) -> None:
    run = _run()
    with pytest.raises(BackendError, match="does not belong to run"):
        store.create_run(run, [_task("other-run", "api")], "x: 1\n")
    assert store.get_run(run.run_id) is None


def test_the_client_is_created_lazily_and_honours_the_emulator_variable(
    firestore_env: Emulator,
) -> None:
    store = FirestoreRunStore(
        project_id=firestore_env.project, collection=f"runs-{uuid.uuid4().hex[:12]}"
    )
    run = _run()
    try:
        assert store.create_run(run, [], "x: 1\n") == (run, True)
        assert store.get_run(run.run_id) == run
    finally:
        store.close()


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (gexc.Aborted("contention"), True),
        (gexc.ServiceUnavailable("down"), True),
        (gexc.DeadlineExceeded("slow"), True),
        (gexc.ResourceExhausted("quota"), True),
        (gexc.PermissionDenied("no"), False),
        (gexc.FailedPrecondition("index"), False),
    ],
    ids=["aborted", "unavailable", "deadline", "exhausted", "denied", "precondition"],
)
def test_api_errors_become_backend_errors_retryable_only_when_transient(
    error: Exception, retryable: bool
) -> None:
    with pytest.raises(BackendError) as caught, _translated("reading run r1"):
        raise error

    assert caught.value.retryable is retryable
    assert str(caught.value).startswith("reading run r1: ")
    assert caught.value.__cause__ is error


def test_waiting_tasks_of_a_run_planned_before_ranks_are_read_in_document_order(
    store: FirestoreRunStore,
) -> None:
    from google.cloud import firestore

    run = _run()
    tasks = [_task(run.run_id, name, TaskStatus.WAITING) for name in ("a", "b", "c", "d")]
    store.create_run(run, tasks, "name: x\n")
    for task in tasks[1:]:  # as an older archdeploy wrote them: no `rank` field
        store._task_ref(task.task_id).update({"rank": firestore.DELETE_FIELD})
    assert "rank" not in (store._task_ref(tasks[1].task_id).get().to_dict() or {})

    assert [t.service for t in store.waiting_tasks(run.run_id, Phase.BUILD, 3)] == [
        "a",
        "b",
        "c",
    ]
    assert [t.service for t in store.waiting_tasks(run.run_id, Phase.BUILD, 9)] == list("abcd")
    assert [t.service for t in store.waiting_tasks(run.run_id, Phase.BUILD, 1)] == ["a"]
