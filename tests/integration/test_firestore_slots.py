"""The project's build slots on the Firestore emulator, under churn: several runs take and
free slots at once, each run's step delivered twice at once (Pub/Sub delivers at least
once). A checker counts the builds in flight after every grant: never more than the
cap. Each build holds one slot document at most, and the end leaves none behind."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.adapters.gcp.firestore_store import FirestoreRunStore

CAP = 3
RUNS = 4
BUILDS = 5
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
DEADLINE = 120.0  # seconds: the whole churn, far beyond what it takes


@pytest.fixture
def store(firestore_client: Any) -> Iterator[FirestoreRunStore]:
    collection = f"runs-{uuid.uuid4().hex[:12]}"
    yield FirestoreRunStore(
        project_id=firestore_client.project, collection=collection, client=firestore_client
    )


class Project:
    """What the runs have done so far, as their tasks' records would say."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.ended: set[str] = set()
        self.started: list[str] = []
        self.worst = 0
        self.errors: list[str] = []

    def start(self, build: str) -> bool:
        with self.lock:
            if build in self.running or build in self.ended:
                return False  # the step's twin started it
            self.running.add(build)
            self.started.append(build)
            self.worst = max(self.worst, len(self.running))
            if len(self.running) > CAP:
                self.errors.append(f"{sorted(self.running)} in flight, cap {CAP}")
            return True

    def finish_builds(self, rng: random.Random) -> None:
        """End a build whenever the cap is full, or nothing else waits: so the cap is
        always reached, whatever the machine's speed."""
        total = RUNS * BUILDS
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.ended) == total:
                    return
                rest = total - len(self.ended) - len(self.running)
                if self.running and (len(self.running) >= CAP or rest == 0):
                    build = rng.choice(sorted(self.running))
                    self.running.discard(build)
                    self.ended.add(build)
            time.sleep(rng.uniform(0.005, 0.03))


def _run_steps(store: FirestoreRunStore, key: str, run: int, project: Project) -> None:
    """One delivery of run `run`'s steps, again and again until its builds have ended."""
    rng = random.Random(f"{key}-{run}-{threading.get_ident()}")
    builds = [f"r{run}:build:s{k}" for k in range(BUILDS)]
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        with project.lock:
            ended = [b for b in builds if b in project.ended]
            waiting = [b for b in builds if b not in project.ended and b not in project.running]
        if len(ended) == BUILDS:
            store.build_slots(key, release=ended, want=[], cap=CAP, lease_seconds=600, now=NOW)
            return
        granted, _ = store.build_slots(
            key, release=ended, want=waiting, cap=CAP, lease_seconds=600, now=NOW
        )
        for build in granted:
            project.start(build)
        time.sleep(rng.uniform(0.0, 0.02))
    project.errors.append(f"run {run} did not finish in {DEADLINE:g}s")


def test_runs_taking_and_freeing_slots_at_once_never_exceed_the_cap(
    store: FirestoreRunStore,
) -> None:
    key = f"p-{uuid.uuid4().hex[:8]}"
    project = Project()
    threads = [
        threading.Thread(target=_run_steps, args=(store, key, run, project))
        for run in range(RUNS)
        for _twin in range(2)
    ]
    threads.append(threading.Thread(target=project.finish_builds, args=(random.Random(key),)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE + 10)
    assert not project.errors, project.errors
    assert sorted(project.started) == sorted(
        f"r{r}:build:s{k}" for r in range(RUNS) for k in range(BUILDS)
    )
    assert project.worst == CAP  # the cap was reached, so it was what held builds back
    db = store._db()
    left = list(db.collection(f"{store.collection}_slots").stream())
    holders = list(db.collection(f"{store.collection}_slot_holders").stream())
    assert (left, holders) == ([], []), "slots still held once every build has ended"


def test_taking_over_an_expired_slot_keeps_its_old_holder_s_claim_on_a_newer_slot(
    store: FirestoreRunStore,
) -> None:
    """A build past its lease that took a new slot still holds it: another build taking
    over its old, expired slot must not delete the holder document that guards the new
    one (else a twin delivery of the first build could take a third slot)."""
    key = f"p-{uuid.uuid4().hex[:8]}"
    db = store._db()
    slots = db.collection(f"{store.collection}_slots")
    lapsed, live = NOW.replace(hour=11), NOW.replace(hour=13)
    slots.document(f"{key}~0").set({"holder": "r1:build:a", "expires_at": lapsed})
    slots.document(f"{key}~1").set({"holder": "r1:build:a", "expires_at": live})
    holder = store._holder_ref(key, "r1:build:a")
    holder.set({"slot": f"{key}~1", "expires_at": live})

    granted, _ = store.build_slots(
        key, release=[], want=["r2:build:b"], cap=2, lease_seconds=600, now=NOW
    )

    assert granted == ["r2:build:b"]
    assert slots.document(f"{key}~0").get().get("holder") == "r2:build:b"
    kept = holder.get()
    assert kept.exists and kept.get("slot") == f"{key}~1"
    again, _ = store.build_slots(
        key, release=[], want=["r1:build:a"], cap=3, lease_seconds=600, now=NOW
    )
    assert again == ["r1:build:a"]
    held = [d.to_dict()["holder"] for d in slots.stream() if d.id.startswith(key)]
    assert sorted(held) == ["r1:build:a", "r2:build:b"], "still one slot each"
