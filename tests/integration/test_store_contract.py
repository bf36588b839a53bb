"""The RunStore contract, run against every implementation: the fake, SQLite, Firestore."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from shared.architecture.model import DeploymentSpec
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
from shared.ports import RunStore

T = TypeVar("T")
NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
ARCHITECTURE = "name: shop\nproject_id: demo\ndataflows: {}\n"


@pytest.fixture(params=["fake", "sqlite", "firestore"], ids=["fake", "sqlite", "firestore"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunStore]:
    if request.param == "fake":
        from tests.fakes import FakeRunStore

        yield FakeRunStore()
    elif request.param == "sqlite":
        from shared.adapters.local.sqlite_store import SqliteRunStore

        sqlite = SqliteRunStore(tmp_path / "runs.db")
        yield sqlite
        sqlite.close()
    else:
        from shared.adapters.gcp.firestore_store import FirestoreRunStore

        client = request.getfixturevalue("firestore_client")
        collection = f"runs-{uuid.uuid4().hex[:12]}"
        yield FirestoreRunStore(project_id=client.project, collection=collection, client=client)


def _run(run_id: str | None = None, created_at: datetime = NOW) -> RunRecord:
    return RunRecord(
        run_id=run_id or uuid.uuid4().hex[:16],
        idempotency_key=f"key-{uuid.uuid4().hex[:8]}",
        project_id="demo",
        dataflows=["orders"],
        created_at=created_at,
        updated_at=created_at,
    )


def _tasks(
    run_id: str, phase: Phase, services: Sequence[str], status: TaskStatus = TaskStatus.WAITING
) -> list[TaskRecord]:
    spec = DeploymentSpec(source_path="svc", cpu="1", environment_vars={"LOG_LEVEL": "info"})
    return [
        TaskRecord(
            task_id=task_id_for(run_id, phase, service),
            run_id=run_id,
            phase=phase,
            service=service,
            dataflow="orders",
            status=status,
            spec=spec,
        )
        for service in services
    ]


def _created(store: RunStore, tasks: Callable[[str], list[TaskRecord]]) -> str:
    run = _run()
    store.create_run(run, tasks(run.run_id), ARCHITECTURE)
    return run.run_id


def _completion(task: TaskRecord, status: TaskStatus = TaskStatus.SUCCEEDED) -> TaskCompletion:
    return TaskCompletion(
        run_id=task.run_id,
        task_id=task.task_id,
        phase=task.phase,
        service=task.service,
        status=status,
        image=f"registry.example/{task.service}@sha256:{'cd' * 32}",
        url=f"https://{task.service}.example.run.app",
        error="boom" if status is TaskStatus.FAILED else None,
        build_id="build-42",
        started_at=NOW,
        finished_at=NOW + timedelta(seconds=12.5),
    )


def _in_threads(count: int, work: Callable[[int], T]) -> list[T]:
    """Run `work(i)` for each i in `count` threads released together."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def _nonzero(counts: Any) -> dict[TaskStatus, int]:
    return {TaskStatus(status): n for status, n in dict(counts).items() if n}


def test_create_run_is_idempotent_and_round_trips_exactly(store: RunStore) -> None:
    run = _run()
    tasks = _tasks(run.run_id, Phase.BUILD, ["api", "web"])

    assert store.create_run(run, tasks, ARCHITECTURE) == (run, True)
    again = run.model_copy(update={"requested_by": "someone else"})
    more = _tasks(run.run_id, Phase.BUILD, ["api", "web", "extra"])
    existing, created = store.create_run(again, more, "other: text")

    assert (existing, created) == (run, False)
    assert store.get_run(run.run_id) == run
    assert store.get_architecture(run.run_id) == ARCHITECTURE
    assert sorted(store.get_tasks(run.run_id), key=lambda t: t.task_id) == tasks
    assert store.get_task(tasks[0].task_id) == tasks[0]


def test_unknown_ids_read_as_nothing(store: RunStore) -> None:
    assert store.get_run("nope") is None
    assert store.get_task("nope:build:api") is None
    assert store.get_tasks("nope") == []
    assert store.get_architecture("nope") is None
    assert store.get_result("nope") is None


def test_get_tasks_filters_by_phase(store: RunStore) -> None:
    run_id = _created(
        store,
        lambda r: _tasks(r, Phase.BUILD, ["a", "b", "c"]) + _tasks(r, Phase.DEPLOY, ["a", "b"]),
    )

    builds = {t.task_id for t in store.get_tasks(run_id, Phase.BUILD)}
    deploys = {t.task_id for t in store.get_tasks(run_id, Phase.DEPLOY)}

    assert builds == {task_id_for(run_id, Phase.BUILD, s) for s in "abc"}
    assert deploys == {task_id_for(run_id, Phase.DEPLOY, s) for s in "ab"}
    assert store.get_tasks(run_id, Phase.DIRECTOR) == []
    assert len(store.get_tasks(run_id)) == 5


def test_waiting_tasks_reads_the_phase_s_waiting_tasks_by_rank_ties_in_file_order(
    store: RunStore,
) -> None:
    ranks = {"a": 3, "b": 0, "c": 2, "d": 2, "e": 1}

    def tasks(run_id: str) -> list[TaskRecord]:
        builds = [
            t.model_copy(update={"rank": ranks[t.service]})
            for t in _tasks(run_id, Phase.BUILD, list(ranks))
        ]
        return builds + _tasks(run_id, Phase.DEPLOY, ["f"])

    run_id = _created(store, tasks)
    other = _created(store, lambda r: _tasks(r, Phase.BUILD, ["z"]))  # rank 0, another run
    store.release_task(task_id_for(run_id, Phase.BUILD, "e"), now=NOW)

    def services(phase: Phase, limit: int) -> list[str]:
        return [t.service for t in store.waiting_tasks(run_id, phase, limit)]

    assert services(Phase.BUILD, 10) == ["b", "c", "d", "a"]
    assert services(Phase.BUILD, 2) == ["b", "c"]
    assert services(Phase.BUILD, 0) == []
    assert services(Phase.DEPLOY, 10) == ["f"]
    assert services(Phase.DIRECTOR, 10) == []
    assert store.waiting_tasks(run_id, Phase.BUILD, 1) == [
        store.get_task(task_id_for(run_id, Phase.BUILD, "b"))
    ]
    assert [t.service for t in store.waiting_tasks(other, Phase.BUILD, 10)] == ["z"]


def test_release_task_lets_only_the_first_caller_win_and_merges_spec_updates(
    store: RunStore,
) -> None:
    run_id = _created(store, lambda r: _tasks(r, Phase.DEPLOY, ["api"]))
    task_id = task_id_for(run_id, Phase.DEPLOY, "api")
    env = {"LOG_LEVEL": "info", "SERVICE_DIRECTOR_URL": "https://director.example"}
    updates = {"image": "registry.example/api@sha256:" + "ef" * 32, "environment_vars": env}

    winners = _in_threads(8, lambda _: store.release_task(task_id, spec_updates=updates, now=NOW))

    [released] = [r for r in winners if r is not None]
    assert released.status is TaskStatus.PENDING
    assert released.released_at == NOW
    assert released.spec is not None
    assert released.spec.image == updates["image"]
    assert released.spec.environment_vars == env
    assert (released.spec.cpu, released.spec.source_path) == ("1", "svc")
    assert store.get_task(task_id) == released
    assert store.release_task(task_id, spec_updates={"image": "x"}, now=NOW) is None


def test_release_tasks_releases_many_at_once_and_each_only_once(store: RunStore) -> None:
    run_id = _created(store, lambda r: _tasks(r, Phase.DEPLOY, ["a", "b", "c"]))
    ids = [task_id_for(run_id, Phase.DEPLOY, name) for name in ("a", "b", "c")]
    store.release_task(ids[1], spec_updates={}, now=NOW)  # b is released already

    released = store.release_tasks([(tid, {"image": f"img-{tid}"}) for tid in ids], now=NOW)

    assert sorted(t.service for t in released) == ["a", "c"]
    for task in released:
        assert task.status is TaskStatus.PENDING
        assert task.spec is not None and task.spec.image == f"img-{task.task_id}"
        assert store.get_task(task.task_id) == task
    assert store.release_tasks([(tid, {}) for tid in ids], now=NOW) == []


def test_claim_task_moves_pending_to_running_under_a_lease(store: RunStore) -> None:
    run_id = _created(store, lambda r: _tasks(r, Phase.BUILD, ["api"], TaskStatus.PENDING))
    task_id = task_id_for(run_id, Phase.BUILD, "api")

    claimed = store.claim_task(task_id, worker="w1", lease_seconds=60, now=NOW)

    assert claimed is not None
    assert (claimed.status, claimed.attempt, claimed.claimed_by) == (TaskStatus.RUNNING, 1, "w1")
    assert claimed.lease_expires_at == NOW + timedelta(seconds=60)
    assert store.get_task(task_id) == claimed


def test_a_live_lease_refuses_a_second_claim_and_an_expired_one_is_reclaimed(
    store: RunStore,
) -> None:
    run_id = _created(store, lambda r: _tasks(r, Phase.BUILD, ["api"], TaskStatus.PENDING))
    task_id = task_id_for(run_id, Phase.BUILD, "api")
    store.claim_task(task_id, worker="w1", lease_seconds=60, now=NOW)

    during = store.claim_task(
        task_id, worker="w2", lease_seconds=60, now=NOW + timedelta(seconds=30)
    )
    after = store.claim_task(
        task_id, worker="w3", lease_seconds=60, now=NOW + timedelta(seconds=61)
    )

    assert during is None
    assert after is not None
    assert (after.status, after.attempt, after.claimed_by) == (TaskStatus.RUNNING, 2, "w3")


@pytest.mark.parametrize(
    "status", [TaskStatus.WAITING, TaskStatus.SUCCEEDED, TaskStatus.FAILED], ids=str
)
def test_waiting_or_terminal_tasks_cannot_be_claimed(store: RunStore, status: TaskStatus) -> None:
    run_id = _created(store, lambda r: _tasks(r, Phase.BUILD, ["api"], status))
    task_id = task_id_for(run_id, Phase.BUILD, "api")

    assert store.claim_task(task_id, worker="w1", lease_seconds=60, now=NOW) is None
    assert store.claim_task("nope:build:api", worker="w1", lease_seconds=60, now=NOW) is None


def test_complete_task_applies_once_and_stores_what_the_worker_reported(store: RunStore) -> None:
    run_id = _created(store, lambda r: _tasks(r, Phase.BUILD, ["api"], TaskStatus.PENDING))
    task_id = task_id_for(run_id, Phase.BUILD, "api")
    claimed = store.claim_task(task_id, worker="w1", lease_seconds=60, now=NOW)
    assert claimed is not None
    completion = _completion(claimed, TaskStatus.FAILED)

    done = store.complete_task(completion)
    duplicate = store.complete_task(completion.model_copy(update={"status": TaskStatus.SUCCEEDED}))

    assert done is not None
    assert done.status is TaskStatus.FAILED
    assert (done.image, done.url, done.error) == (completion.image, completion.url, "boom")
    assert (done.build_id, done.started_at) == ("build-42", NOW)
    assert done.finished_at == completion.finished_at
    assert done.duration_seconds == 12.5
    assert duplicate is None
    assert store.get_task(task_id) == done


def test_a_completion_for_an_unknown_task_changes_nothing(store: RunStore) -> None:
    run_id = _created(store, lambda r: _tasks(r, Phase.BUILD, ["api"]))
    ghost = _tasks(run_id, Phase.BUILD, ["ghost"])[0]

    assert store.complete_task(_completion(ghost)) is None
    assert store.get_task(ghost.task_id) is None


def test_a_completion_arriving_before_the_claim_still_applies(store: RunStore) -> None:
    run_id = _created(store, lambda r: _tasks(r, Phase.BUILD, ["api"], TaskStatus.PENDING))
    task = store.get_task(task_id_for(run_id, Phase.BUILD, "api"))
    assert task is not None

    done = store.complete_task(_completion(task))

    assert done is not None and done.status is TaskStatus.SUCCEEDED
    assert store.claim_task(task.task_id, worker="late", lease_seconds=60, now=NOW) is None


def test_a_completion_from_an_attempt_claimed_over_is_refused(store: RunStore) -> None:
    run_id = _created(store, lambda r: _tasks(r, Phase.BUILD, ["api"], TaskStatus.PENDING))
    task_id = task_id_for(run_id, Phase.BUILD, "api")
    first = store.claim_task(task_id, worker="w1", lease_seconds=60, now=NOW)
    later = NOW + timedelta(seconds=61)
    second = store.claim_task(task_id, worker="w2", lease_seconds=60, now=later)
    assert first is not None and second is not None
    worker = {"build_id": None}

    stale = store.complete_task(_completion(first).model_copy(update=worker))
    current = store.complete_task(
        _completion(second).model_copy(update={**worker, "attempt": 2, "image": "img-2"})
    )

    assert stale is None
    assert current is not None
    assert (current.status, current.attempt, current.image) == (TaskStatus.SUCCEEDED, 2, "img-2")


def test_a_build_event_for_another_build_than_the_tasks_is_refused(store: RunStore) -> None:
    run_id = _created(store, lambda r: _tasks(r, Phase.BUILD, ["api"], TaskStatus.RUNNING))
    task_id = task_id_for(run_id, Phase.BUILD, "api")
    store.record_build_id(task_id, "build-2")
    task = store.get_task(task_id)
    assert task is not None

    stale = store.complete_task(_completion(task).model_copy(update={"build_id": "build-1"}))
    current = store.complete_task(_completion(task).model_copy(update={"build_id": "build-2"}))

    assert stale is None
    assert current is not None and current.status is TaskStatus.SUCCEEDED


def test_record_build_id_is_remembered(store: RunStore) -> None:
    run_id = _created(store, lambda r: _tasks(r, Phase.BUILD, ["api"], TaskStatus.RUNNING))
    task_id = task_id_for(run_id, Phase.BUILD, "api")

    store.record_build_id(task_id, "operations/build-7")

    task = store.get_task(task_id)
    assert task is not None and task.build_id == "operations/build-7"


def test_count_tasks_counts_the_phase_by_status(store: RunStore) -> None:
    def planned(run_id: str) -> list[TaskRecord]:
        return (
            _tasks(run_id, Phase.BUILD, ["a", "b", "c", "d"], TaskStatus.PENDING)
            + _tasks(run_id, Phase.BUILD, ["e"], TaskStatus.WAITING)
            + _tasks(run_id, Phase.DEPLOY, ["a", "b"], TaskStatus.WAITING)
        )

    run_id = _created(store, planned)
    tasks = {t.service: t for t in store.get_tasks(run_id, Phase.BUILD)}
    store.complete_task(_completion(tasks["a"]))
    store.complete_task(_completion(tasks["b"], TaskStatus.FAILED))
    store.claim_task(tasks["c"].task_id, worker="w", lease_seconds=60, now=NOW)

    expected = {
        TaskStatus.SUCCEEDED: 1,
        TaskStatus.FAILED: 1,
        TaskStatus.RUNNING: 1,
        TaskStatus.PENDING: 1,
        TaskStatus.WAITING: 1,
    }
    assert _nonzero(store.count_tasks(run_id, Phase.BUILD)) == expected
    assert _nonzero(store.count_tasks(run_id, Phase.DEPLOY)) == {TaskStatus.WAITING: 2}
    assert _nonzero(store.count_tasks(run_id, Phase.DIRECTOR)) == {}


def test_update_run_applies_only_when_expect_matches(store: RunStore) -> None:
    run_id = _created(store, lambda r: [])

    moved = store.update_run(run_id, expect={"phase": Phase.BUILD}, changes={"phase": "deploy"})
    stale = store.update_run(run_id, expect={"phase": Phase.BUILD}, changes={"halted": "x"})

    assert moved is not None and moved.phase is Phase.DEPLOY
    assert stale is None
    assert store.get_run(run_id) == moved
    assert store.update_run("nope", expect={}, changes={"halted": "x"}) is None


def test_finish_run_succeeds_exactly_once_under_concurrency(store: RunStore) -> None:
    run_id = _created(store, lambda r: [])
    result = RunResult(
        run_id=run_id,
        status=RunStatus.SUCCEEDED,
        phase=Phase.DEPLOY,
        created_at=NOW,
        finished_at=NOW + timedelta(minutes=3),
        images={"api": "registry.example/api@sha256:" + "ab" * 32},
        urls={"api": "https://api.example.run.app"},
    )

    outcomes = _in_threads(8, lambda _: store.finish_run(run_id, result))

    assert outcomes.count(True) == 1
    assert outcomes.count(False) == 7
    assert store.get_result(run_id) == result
    run = store.get_run(run_id)
    assert run is not None
    assert (run.status, run.finished_at) == (RunStatus.SUCCEEDED, result.finished_at)
    failed = result.model_copy(update={"status": RunStatus.FAILED})
    assert store.finish_run(run_id, failed) is False
    assert store.get_result(run_id) == result


def test_list_runs_returns_the_newest_first(store: RunStore) -> None:
    runs = [_run(created_at=NOW + timedelta(minutes=m)) for m in (2, 0, 3, 1)]
    for run in runs:
        store.create_run(run, [], ARCHITECTURE)

    newest_first = sorted(runs, key=lambda r: r.created_at, reverse=True)

    assert [r.run_id for r in store.list_runs()] == [r.run_id for r in newest_first]
    assert [r.run_id for r in store.list_runs(limit=2)] == [r.run_id for r in newest_first[:2]]


def test_fifty_concurrent_completions_of_one_run_all_apply(store: RunStore) -> None:
    services = [f"svc-{i:02d}" for i in range(50)]
    run_id = _created(store, lambda r: _tasks(r, Phase.BUILD, services, TaskStatus.PENDING))
    tasks = store.get_tasks(run_id, Phase.BUILD)

    applied = _in_threads(50, lambda i: store.complete_task(_completion(tasks[i])))

    assert all(record is not None for record in applied)
    assert _nonzero(store.count_tasks(run_id, Phase.BUILD)) == {TaskStatus.SUCCEEDED: 50}


# --- what the scheduler keeps across runs ----------------------------------------------


def test_durations_are_smoothed_per_project_and_start_empty(store: RunStore) -> None:
    project = f"p-{uuid.uuid4().hex[:8]}"
    assert dict(store.get_durations(project)) == {}
    store.record_durations(project, {"build:api": 10.0, "deploy:api": 2.0})
    store.record_durations(project, {"build:api": 20.0})
    assert dict(store.get_durations(project)) == {"build:api": 13.0, "deploy:api": 2.0}
    assert dict(store.get_durations(f"{project}-other")) == {}


def test_concurrent_runs_recording_durations_lose_no_sample(store: RunStore) -> None:
    project = f"p-{uuid.uuid4().hex[:8]}"
    _in_threads(6, lambda i: store.record_durations(project, {f"build:svc-{i}": float(i)}))
    assert dict(store.get_durations(project)) == {f"build:svc-{i}": float(i) for i in range(6)}


def test_build_slots_hold_the_cap_are_idempotent_freed_and_taken_back_when_expired(
    store: RunStore,
) -> None:
    project = f"p-{uuid.uuid4().hex[:8]}"

    def take(want: list[str], release: Sequence[str] = (), now: datetime = NOW) -> Any:
        return store.build_slots(
            project, release=release, want=want, cap=2, lease_seconds=60, now=now
        )

    assert take(["a", "b", "c"]) == (["a", "b"], 0)
    assert take(["b", "c"]) == (["b"], 0)  # b holds one already; c finds none free
    assert take(["c"], release=["a"]) == (["c"], 1)
    assert take(["d"], release=["a"]) == ([], 0)  # freeing twice frees nothing
    # b and c's run was killed: a minute later their leases have lapsed.
    assert take(["d", "e"], now=NOW + timedelta(seconds=61)) == (["d", "e"], 0)
    other = store.build_slots(
        f"{project}-other", release=[], want=["x"], cap=1, lease_seconds=60, now=NOW
    )
    assert other == (["x"], 0)  # each project has its own slots


def test_concurrent_callers_never_hold_more_build_slots_than_the_cap(store: RunStore) -> None:
    project = f"p-{uuid.uuid4().hex[:8]}"

    def take(i: int) -> list[str]:
        want = [f"run{i}:build:svc-{k}" for k in range(3)]
        granted, _ = store.build_slots(
            project, release=[], want=want, cap=5, lease_seconds=600, now=NOW
        )
        return granted

    granted = [g for got in _in_threads(6, take) for g in got]
    assert len(granted) == len(set(granted)) == 5
    # Everyone frees theirs: the whole cap is free again.
    _, freed = store.build_slots(
        project, release=granted, want=[], cap=5, lease_seconds=600, now=NOW
    )
    assert freed == 5
    assert len(take(9)) == 3


def test_callers_asking_at_once_for_the_same_builds_take_one_slot_each(store: RunStore) -> None:
    """Duplicate deliveries of one run's step ask for the same builds at once: each build
    takes one slot, never two (a second would be counted against the cap until the build
    ends, and starve other runs)."""
    project = f"p-{uuid.uuid4().hex[:8]}"
    want = [f"run:build:svc-{k}" for k in range(3)]

    def take(i: int) -> list[str]:
        granted, _ = store.build_slots(
            project, release=[], want=want, cap=6, lease_seconds=600, now=NOW
        )
        return granted

    for got in _in_threads(6, take):
        assert got == want
    probes = [f"probe-{k}" for k in range(6)]
    granted, _ = store.build_slots(
        project, release=[], want=probes, cap=6, lease_seconds=600, now=NOW
    )
    assert granted == probes[:3], "a build holds more than one slot"
    _, freed = store.build_slots(
        project, release=[*want, *probes], want=[], cap=6, lease_seconds=600, now=NOW
    )
    assert freed == 6
