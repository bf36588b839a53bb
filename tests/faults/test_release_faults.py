"""Releases under injected faults: named scenarios (a crash mid-promote, a duplicated
promote, a verify past its deadline) and seeded random ones, each checked against the
release invariant: every service ends on a verified revision or on the one before."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from shared.adapters.local.sqlite_store import SqliteRunStore
from shared.messages import Phase, RunStatus, TaskStatus
from tests.faults.release_faults import (
    SHAPES,
    ReleaseFaults,
    ReleaseSeen,
    release_violations,
    run_release,
    task,
)
from tests.faults.tally import Tally

RANDOM_RELEASES = 40


def _checked(seen: ReleaseSeen) -> ReleaseSeen:
    assert release_violations(seen) == []
    return seen


def test_a_crash_mid_promote_resumes_and_the_release_completes(tally: Tally) -> None:
    faults = ReleaseFaults(crash_promote={"b"}, steps=[10, 50, 100])
    seen = _checked(run_release(f"crash-promote-{tally.seed}", "chain", faults))

    assert seen.result is not None and seen.result.status is RunStatus.SUCCEEDED
    promote = task(seen, Phase.PROMOTE, "b")
    assert promote.attempt == 2 and promote.release and promote.release.percent == 100
    assert all(
        p == {task(seen, Phase.STAGE, n).release.revision: 100}  # type: ignore[union-attr]
        for n, p in seen.after.items()
    )


def test_a_duplicated_promote_moves_traffic_once_per_step(tally: Tally) -> None:
    seen = _checked(
        run_release(f"dup-promote-{tally.seed}", "diamond", ReleaseFaults(), redeliver=1.0)
    )

    assert seen.result is not None and seen.result.status is RunStatus.SUCCEEDED
    assert all(
        t.attempt == 1 for t in seen.tasks if t.status is TaskStatus.SUCCEEDED and not t.reused
    )


def test_a_verify_past_its_deadline_promotes_nothing(tally: Tally) -> None:
    seen = _checked(
        run_release(f"slow-verify-{tally.seed}", "chain", ReleaseFaults(slow_check={"b"}))
    )

    assert seen.result is not None and seen.result.status is RunStatus.FAILED
    assert task(seen, Phase.VERIFY, "b").status is TaskStatus.TIMED_OUT
    assert seen.after == seen.before


def test_a_crash_after_staging_stages_once(tally: Tally) -> None:
    seen = _checked(
        run_release(f"crash-stage-{tally.seed}", "pair", ReleaseFaults(crash_stage={"x"}))
    )

    assert seen.result is not None and seen.result.status is RunStatus.SUCCEEDED
    assert task(seen, Phase.STAGE, "x").attempt == 2
    assert len([r for r in seen.after["x"]]) == 1


def _draw(rng: random.Random) -> tuple[str, ReleaseFaults, dict[str, object]]:
    shape = rng.choice(sorted(SHAPES))
    names = [s["name"] for s in SHAPES[shape]]
    faults = ReleaseFaults(steps=rng.choice([[100], [10, 50, 100], [25, 100]]))
    for pool, chance in ((faults.crash_stage, 0.3), (faults.crash_promote, 0.3)):
        if rng.random() < chance:
            pool.add(rng.choice(names))
    if rng.random() < 0.3:
        faults.fail_check[rng.choice(names)] = rng.randint(1, 3)
    if rng.random() < 0.15:
        faults.slow_check.add(rng.choice(names))
    delivery = {"redeliver": rng.choice([0.0, 0.3, 1.0]), "reorder": rng.random() < 0.6}
    return shape, faults, delivery


@pytest.mark.parametrize("kind", ["fake", "sqlite"])
def test_random_releases_keep_the_release_invariant(
    kind: str, tally: Tally, tmp_path: Path
) -> None:
    violations = []
    for i in range(RANDOM_RELEASES if kind == "fake" else RANDOM_RELEASES // 4):
        key = f"release-{tally.seed}-{kind}-{i}"
        shape, faults, delivery = _draw(random.Random(key))
        store = SqliteRunStore(tmp_path / f"{i}.db") if kind == "sqlite" else None
        try:
            seen = run_release(key, shape, faults, store, **delivery)
        finally:
            if store is not None:
                store.close()
        violations += [
            f"{key} ({shape}, {faults}, {delivery}): {v}" for v in release_violations(seen)
        ]
    assert violations == [], "\n".join(violations[:10])


def test_the_release_checker_reports_each_broken_invariant(tally: Tally) -> None:
    seen = _checked(run_release(f"checker-{tally.seed}", "pair", ReleaseFaults()))
    failed = _checked(
        run_release(f"checker-failed-{tally.seed}", "pair", ReleaseFaults(fail_check={"y": 1}))
    )
    assert failed.result is not None and failed.result.status is RunStatus.FAILED
    staged_y = task(failed, Phase.STAGE, "y").release
    assert staged_y is not None
    broken = {
        "neither verified nor what served before": replace(
            failed, after={**failed.after, "y": {staged_y.revision: 100}}
        ),
        "yet traffic moved": replace(
            failed, after={**failed.after, "x": {**failed.after["x"], "x-00009": 0}}
        ),
        "never finished": replace(seen, result=None),
        "2 RunFinished events": replace(seen, finished=2),
    }
    for words, observed in broken.items():
        assert any(words in v for v in release_violations(observed)), words
