"""One run through the real core in embedded mode: the in-process bus and a SQLite file
store in a temporary directory, with `BenchDeployer` doing the builds and deploys."""

from __future__ import annotations

import gc
import logging
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from benchmarks.harness import baselines
from benchmarks.harness.deployer import BenchDeployer
from benchmarks.harness.stats import p50_p99, ratio
from benchmarks.harness.timing_store import TimingStore
from benchmarks.harness.workload import Workload, bounds
from shared.adapters.local.sqlite_store import SqliteRunStore
from shared.bootstrap import embedded
from shared.messages import DeployRequest, Phase, RunStatus, TaskRecord
from shared.ports import RunStore
from shared.settings import Settings

RUN_TIMEOUT = 600.0


@dataclass(frozen=True)
class Case:
    name: str
    workload: Workload
    cap: int  # the in-process bus's parallelism: at most this many tasks at once
    baseline: bool = True  # also time the thread-pool baseline
    run_sequential: bool = False  # measure the sequential baseline (else: computed)


def run_case(case: Case) -> dict[str, Any]:
    """Measure one case; returns a JSON-ready row."""
    workload = case.workload
    seconds = workload.task_seconds()
    limits = bounds(workload, seconds, case.cap)
    measured = _embedded_run(workload, seconds, case.cap)
    row: dict[str, Any] = {
        "mode": "embedded",
        "case": case.name,
        "workload": workload.label(),
        "services": workload.services,
        "cap": case.cap,
        "critical_path_s": round(limits.critical_path, 4),
        "capped_bound_s": round(limits.capped, 4),
        "sequential_s": round(limits.sequential, 4),
        **measured,
    }
    makespan = measured["makespan_s"]
    row["vs_critical_path"] = ratio(makespan, limits.critical_path)
    row["vs_capped_bound"] = ratio(makespan, limits.capped)
    if case.run_sequential:
        row["sequential_s"] = round(baselines.sequential(workload, seconds), 4)
    if case.baseline:
        pool = baselines.thread_pool(workload, seconds, case.cap)
        row["thread_pool_s"] = round(pool, 4)
        row["vs_thread_pool"] = ratio(makespan, pool)
    return row


def _embedded_run(workload: Workload, seconds: dict[str, float], cap: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="archdeploy-bench-") as tmp:
        root = Path(tmp)
        for name in workload.names():  # sources exist, should validation look
            (root / "services" / name).mkdir(parents=True)
        store = TimingStore(SqliteRunStore(root / "state" / "runs.db"))
        deployer = BenchDeployer(seconds, workload.mode)
        settings = Settings(
            parallelism=cap,
            state_dir=root / "state",
            build_concurrency=cap,
            deploy_concurrency=cap,
        )
        system = embedded(settings, deployer=deployer, store=cast(RunStore, store))
        request = DeployRequest(
            architecture=workload.document(),
            source_root=str(root),
            idempotency_key=uuid.uuid4().hex,
            requested_by="bench",
        )
        try:
            logging.disable(logging.INFO)  # the handlers' per-task lines are not the subject
            as_up_starts_a_run()
            began = time.time()
            started = time.perf_counter()
            run = system.submit(request)
            dispatched = time.perf_counter()
            result = system.wait(run.run_id, timeout=RUN_TIMEOUT)
            makespan = time.perf_counter() - started
            tasks = system.store.get_tasks(run.run_id)
        finally:
            gc.unfreeze()
            logging.disable(logging.NOTSET)
            system.close()
    if result.status is not RunStatus.SUCCEEDED:
        raise RuntimeError(f"benchmark run ended {result.status.value}: {result.errors[:3]}")
    return {
        "makespan_s": round(makespan, 4),
        "dispatch_s": round(dispatched - started, 4),
        **event_latencies(tasks, deployer, store, began),
    }


def as_up_starts_a_run() -> None:
    """The heap as `archdeploy up` has it when its run starts: no garbage of an earlier run
    (a new process has none), and what is alive frozen (`shared.cli.process.run_starts`).
    The caller unfreezes after the run."""
    gc.collect()
    gc.freeze()


def event_latencies(
    tasks: list[TaskRecord], deployer: BenchDeployer, store: TimingStore, began: float
) -> dict[str, Any]:
    """Per-event overheads, from the task records, the deployer's spans and the store proxy."""
    spans = {s.task_id: s for s in deployer.spans}
    release_to_start = [
        spans[t.task_id].started - t.released_at.timestamp()
        for t in tasks
        if t.released_at is not None and t.task_id in spans
    ]
    to_applied = [
        store.applied[t.task_id] - spans[t.task_id].finished
        for t in tasks
        if t.task_id in store.applied and t.task_id in spans
    ]
    to_aggregated = [
        store.aggregated[t.task_id] - spans[t.task_id].finished
        for t in tasks
        if t.task_id in store.aggregated and t.task_id in spans
    ]
    return {
        "release_to_start_ms": p50_p99(release_to_start),
        "completion_to_applied_ms": p50_p99(to_applied),
        "completion_to_aggregator_ms": p50_p99(to_aggregated),
        **phase_edges(tasks, began),
    }


def phase_edges(tasks: list[TaskRecord], began: float) -> dict[str, Any]:
    """When the phases opened and closed, seconds after submission: where the time went."""

    def stamps(phase: Phase, field: str) -> list[float]:
        values = [getattr(t, field) for t in tasks if t.phase is phase]
        return [v.timestamp() - began for v in values if v is not None]

    edges: dict[str, Any] = {}
    for phase in (Phase.BUILD, Phase.DEPLOY):
        started, finished = stamps(phase, "started_at"), stamps(phase, "finished_at")
        released = stamps(phase, "released_at")
        if started and finished and released:
            edges[f"{phase.value}_first_released_s"] = round(min(released), 4)
            edges[f"{phase.value}_last_started_s"] = round(max(started), 4)
            edges[f"{phase.value}_last_finished_s"] = round(max(finished), 4)
    return edges
