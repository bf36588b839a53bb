"""Admission's read on a Firestore database that lacks our composite index (one not made
by our terraform). Firestore refuses a query that needs a composite index it doesn't
have, with FAILED_PRECONDITION and a link to create it ("If you attempt a compound query
... that doesn't map to an existing index, you receive an error":
https://firebase.google.com/docs/firestore/query-data/indexing). The emulator serves
every query without indexes, so the refusal is made here, in the SDK's query, the way
the real service answers."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.query import Query

from shared.adapters.gcp.firestore_store import FirestoreRunStore
from shared.architecture.model import DeploymentSpec
from shared.messages import Phase, RunRecord, TaskRecord, TaskStatus, task_id_for

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
RANKS = {"a": 3, "b": 0, "c": 2, "d": 1}
REFUSAL = (
    "The query requires an index. You can create it here: "
    "https://console.firebase.google.com/v1/r/project/demo/firestore/indexes?create_composite=x"
)


@pytest.fixture
def store(firestore_client: Any) -> Iterator[FirestoreRunStore]:
    collection = f"runs-{uuid.uuid4().hex[:12]}"
    yield FirestoreRunStore(
        project_id=firestore_client.project, collection=collection, client=firestore_client
    )


@pytest.fixture
def no_index(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Ordered queries refused as by a database without the index; returns the refusals."""
    refused: list[str] = []
    stream = Query.stream

    def refusing(self: Query, *args: Any, **kwargs: Any) -> Any:
        if self._orders:
            refused.append("ordered")
            raise gexc.FailedPrecondition(REFUSAL)
        return stream(self, *args, **kwargs)

    monkeypatch.setattr(Query, "stream", refusing)
    return refused


def _created(store: FirestoreRunStore) -> str:
    run_id = uuid.uuid4().hex[:16]
    run = RunRecord(
        run_id=run_id,
        idempotency_key=f"key-{run_id}",
        project_id="demo",
        dataflows=["orders"],
        created_at=NOW,
        updated_at=NOW,
    )
    spec = DeploymentSpec(source_path="svc")
    tasks = [
        TaskRecord(
            task_id=task_id_for(run_id, Phase.BUILD, service),
            run_id=run_id,
            phase=Phase.BUILD,
            service=service,
            dataflow="orders",
            status=TaskStatus.WAITING,
            spec=spec,
            rank=rank,
        )
        for service, rank in RANKS.items()
    ]
    store.create_run(run, tasks, "name: shop\nproject_id: demo\ndataflows: {}\n")
    return run_id


def test_without_the_index_admission_reads_every_waiting_task_by_rank_and_says_so_once(
    store: FirestoreRunStore, no_index: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    run_id = _created(store)

    with caplog.at_level(logging.WARNING):
        first = [t.service for t in store.waiting_tasks(run_id, Phase.BUILD, 2)]
        again = [t.service for t in store.waiting_tasks(run_id, Phase.BUILD, 10)]

    assert (first, again) == (["b", "d"], ["b", "d", "c", "a"])
    assert no_index == ["ordered"], "the refused query is not sent again"
    [warning] = [r for r in caplog.records if "composite index" in r.getMessage()]
    assert "terraform/firestore.tf" in warning.getMessage()
    assert "create_composite" in warning.getMessage(), "Firestore's link is passed on"


def test_with_the_index_admission_reads_only_the_first_by_rank(
    store: FirestoreRunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _created(store)
    unordered: list[str] = []
    stream = Query.stream

    def counting(self: Query, *args: Any, **kwargs: Any) -> Any:
        if not self._orders:
            unordered.append("all")
        return stream(self, *args, **kwargs)

    monkeypatch.setattr(Query, "stream", counting)

    assert [t.service for t in store.waiting_tasks(run_id, Phase.BUILD, 2)] == ["b", "d"]
    assert unordered == [], "no read of every waiting task when the index answers"
