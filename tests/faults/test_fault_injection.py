"""The core under injected faults, embedded: hundreds of seeded runs on the fault-injecting
FakeBus, over FakeRunStore and SqliteRunStore, with a fake clock so leases and deadlines
pass at once. Every run must keep every invariant in `invariants.check`.

Replay a failure with `ARCHDEPLOY_FAULT_SEED=<seed printed in the table> pytest tests/faults`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.local.sqlite_store import SqliteRunStore
from shared.core.dispatcher import run_id_for
from shared.core.plan import plan_run
from shared.messages import (
    TOPIC_COMPLETIONS,
    TOPIC_TASKS,
    Phase,
    RunStatus,
    TaskStatus,
    task_id_for,
)
from tests.builders import architecture
from tests.fakes import FakeRunStore
from tests.faults.driver import run_embedded
from tests.faults.invariants import Observed, check
from tests.faults.scenarios import Fault, Scenario, draw_scenario
from tests.faults.tally import CI_SEED, SEED_ENV, Tally, suite_seed

RUNS_PER_CHUNK = 40
FAKE_CHUNKS = 5
SQLITE_RUNS = 40


def _run_all(
    tally: Tally, setup: str, scenarios: Iterable[Scenario], make_store: Callable[[Scenario], Any]
) -> list[Observed]:
    observed, failures = [], []
    for scenario in scenarios:
        store = make_store(scenario)
        try:
            seen = run_embedded(scenario, store)
        finally:
            if isinstance(store, SqliteRunStore):
                store.close()
        violations = check(seen)
        tally.add(setup, seen, violations)
        observed.append(seen)
        failures += [f"{scenario.describe()}:\n    {v}" for v in violations]
    replay = f"replay with {SEED_ENV}={tally.seed}"
    assert not failures, f"{len(failures)} invariant violations ({replay}):\n" + "\n".join(
        failures[:15]
    )
    return observed


@pytest.mark.parametrize("chunk", range(FAKE_CHUNKS), ids=lambda c: f"runs-{c * RUNS_PER_CHUNK}")
def test_runs_on_the_fake_store_keep_every_invariant_under_random_faults(
    chunk: int, tally: Tally
) -> None:
    scenarios = [
        draw_scenario(tally.seed, f"fake-{chunk * RUNS_PER_CHUNK + i}")
        for i in range(RUNS_PER_CHUNK)
    ]
    _run_all(tally, "embedded: FakeBus + FakeRunStore", scenarios, lambda _: FakeRunStore())


def test_runs_on_sqlite_keep_every_invariant_under_random_faults(
    tally: Tally, tmp_path: Path
) -> None:
    scenarios = [draw_scenario(tally.seed, f"sqlite-{i}") for i in range(SQLITE_RUNS)]
    _run_all(
        tally,
        "embedded: FakeBus + SqliteRunStore",
        scenarios,
        lambda s: SqliteRunStore(tmp_path / f"{s.name}.db"),
    )


# --- each fault alone, on a known shape, with what it must lead to ----------------------

TARGETS = {
    "build": (Phase.BUILD, "ingest"),
    "director": (Phase.DIRECTOR, "director"),
    "deploy": (Phase.DEPLOY, "ingest"),
}
CALL_FAULTS = [
    Fault.CRASH,
    Fault.TRANSIENT_RETRIED,
    Fault.TRANSIENT,
    Fault.PERMANENT_BUILD,
    Fault.PERMANENT_DEPLOY,
    Fault.SLOW,
    Fault.STALE,
]
MESSAGE_FAULTS = {
    Fault.DROPPED_TASK: TOPIC_TASKS,
    Fault.DROPPED_COMPLETION: TOPIC_COMPLETIONS,
    Fault.POISON_TASK: TOPIC_TASKS,
    Fault.POISON_TASK_BARE: TOPIC_TASKS,
    Fault.POISON_COMPLETION: TOPIC_COMPLETIONS,
    Fault.POISON_COMPLETION_BARE: TOPIC_COMPLETIONS,
}
CASES = [
    (fault, target)
    for fault in [*CALL_FAULTS, *MESSAGE_FAULTS]
    for target in TARGETS
    if not (fault is Fault.PERMANENT_BUILD and target != "build")
    and not (fault is Fault.PERMANENT_DEPLOY and target == "build")
]
# What the targeted task ends as, and how many times it was claimed.
ENDS = {
    Fault.CRASH: (TaskStatus.SUCCEEDED, 2),
    Fault.STALE: (TaskStatus.SUCCEEDED, 2),
    Fault.TRANSIENT: (TaskStatus.FAILED, 1),
    Fault.PERMANENT_BUILD: (TaskStatus.FAILED, 1),
    Fault.PERMANENT_DEPLOY: (TaskStatus.FAILED, 1),
    Fault.SLOW: (TaskStatus.TIMED_OUT, 1),
    Fault.POISON_TASK: (TaskStatus.FAILED, 0),
}


def _plain(tally: Tally, name: str) -> Scenario:
    """The example architecture (the director, ingest -> enrich, notify), no faults yet;
    caps, so a failed build has queued builds to stop and deploys queue too."""
    arch = architecture()
    key = f"faults-{tally.seed}-{name}"
    tasks = plan_run(arch, run_id=run_id_for(key)).tasks
    return Scenario(
        name=name, key=key, arch=arch, tasks=tasks, build_concurrency=2, deploy_concurrency=1
    )


def _alone(tally: Tally, fault: Fault, target: str) -> Scenario:
    scenario = _plain(tally, f"alone-{fault.name}-{target}")
    task_id = task_id_for(scenario.run_id, *TARGETS[target])
    if fault in MESSAGE_FAULTS:
        scenario.on_message[(MESSAGE_FAULTS[fault], task_id)] = (fault, "not json")
    else:
        scenario.on_call[task_id] = fault
    return scenario


@pytest.mark.parametrize(("fault", "target"), CASES, ids=[f"{f.name}-{t}" for f, t in CASES])
def test_each_fault_alone_keeps_the_invariants_and_ends_its_task_as_it_should(
    fault: Fault, target: str, tally: Tally
) -> None:
    scenario = _alone(tally, fault, target)
    (seen,) = _run_all(tally, "embedded: one fault at a time", [scenario], lambda _: FakeRunStore())
    assert scenario.triggered[fault] == 1
    status, claims = ENDS.get(fault, (TaskStatus.SUCCEEDED, 1))
    phase, service = TARGETS[target]
    (task,) = [t for t in seen.tasks if (t.phase, t.service) == (phase, service)]
    assert (task.status, task.attempt) == (status, claims)
    assert seen.result is not None
    succeeded = status is TaskStatus.SUCCEEDED
    assert seen.result.status is (RunStatus.SUCCEEDED if succeeded else RunStatus.FAILED)
    if fault is Fault.TRANSIENT:
        # The core does not retry what the adapter gave up on: the task fails, saying so.
        assert task.error and "UNAVAILABLE" in task.error and "gave up after 3" in task.error


@pytest.mark.parametrize(
    "fault", [Fault.REDELIVERED, Fault.REORDERED, Fault.REPEATED_REQUEST, Fault.POISON_STRAY]
)
def test_delivery_faults_alone_change_nothing_in_the_result(fault: Fault, tally: Tally) -> None:
    scenario = _plain(tally, f"alone-{fault.name}")
    scenario.redeliver = 1.0 if fault is Fault.REDELIVERED else 0.0
    scenario.reorder = fault is Fault.REORDERED
    scenario.repeat_request = fault is Fault.REPEATED_REQUEST
    if fault is Fault.POISON_STRAY:
        ghost = {"run_id": scenario.run_id, "task_id": f"{scenario.run_id}:build:ghost"}
        scenario.stray = [(TOPIC_TASKS, b"{oops", ghost), (TOPIC_COMPLETIONS, b"\xff", ghost)]
    (seen,) = _run_all(tally, "embedded: one fault at a time", [scenario], lambda _: FakeRunStore())
    assert scenario.triggered[fault] >= 1
    assert seen.result is not None and seen.result.status is RunStatus.SUCCEEDED
    assert sorted(seen.result.urls) == ["director", "enrich", "ingest", "notify"]


# --- the checker itself -----------------------------------------------------------------


def test_the_checker_reports_each_broken_invariant(tally: Tally) -> None:
    scenario = _plain(tally, "checker")
    (seen,) = _run_all(tally, "embedded: one fault at a time", [scenario], lambda _: FakeRunStore())
    assert seen.result is not None and check(seen) == []
    build = next(e for e in seen.effects if e.phase is Phase.BUILD)
    hit = task_id_for(scenario.run_id, Phase.BUILD, "ingest")
    other = seen.result.model_copy(update={"images": {**seen.result.images, "ingest": "x"}})
    broken = {
        "ran 2 times": replace(seen, effects=[*seen.effects, build]),
        "not what was built": replace(seen, result=other, finished=seen.finished),
        "RunFinished events": replace(seen, finished=seen.finished * 2),
        "finish_run won": replace(seen, finish_wins=2),
        "expected": replace(seen, scenario=replace(scenario, hit={hit: Fault.PERMANENT_BUILD})),
        "never finished": replace(seen, result=None),
    }
    for words, observed in broken.items():
        assert any(words in v for v in check(observed)), words


@pytest.mark.parametrize(
    ("environ", "seed", "origin"),
    [
        ({"CI": "true"}, CI_SEED, "fixed in CI"),
        ({"CI": "true", SEED_ENV: "42"}, 42, f"from {SEED_ENV}"),
        ({SEED_ENV: "42"}, 42, f"from {SEED_ENV}"),
    ],
    ids=["ci", "ci-with-seed", "local-with-seed"],
)
def test_the_seed_is_fixed_in_ci_and_the_one_asked_for_when_given(
    environ: dict[str, str], seed: int, origin: str
) -> None:
    assert suite_seed(environ) == (seed, origin)


@pytest.mark.parametrize(
    "environ", [{}, {"CI": "false"}, {"CI": "true", SEED_ENV: "random"}], ids=str
)
def test_the_seed_is_random_locally_or_when_asked_for(environ: dict[str, str]) -> None:
    seeds = {suite_seed(environ) for _ in range(5)}
    assert {origin for _, origin in seeds} == {"random"}
    assert len(seeds) > 1
