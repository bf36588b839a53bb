"""Aggregator throughput: completions per second that `record_completion` applies on the
SQLite store, with a share of duplicate deliveries (Pub/Sub's at-least-once)."""

from __future__ import annotations

import logging
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.harness.workload import Durations, Workload
from shared.adapters.local.inprocess_bus import InProcessBus
from shared.adapters.local.sqlite_store import SqliteRunStore
from shared.core.aggregator import record_completion
from shared.core.dispatcher import dispatch_request
from shared.core.runtime import Runtime
from shared.messages import DeployRequest, Phase, RunStatus, TaskCompletion, TaskStatus, utcnow


def throughput(services: int = 2000, duplicates: float = 0.2, seed: int = 8) -> dict[str, Any]:
    """One run of `services`: every build's completion (plus `duplicates` of them again,
    shuffled in), then every deploy's. The bus has no subscribers: what is measured is the
    aggregator alone (the store writes, the state machine, publishing the next tasks)."""
    rng = random.Random(seed)
    workload = Workload(services, Durations(0.0))
    with tempfile.TemporaryDirectory(prefix="archdeploy-bench-agg-") as tmp:
        root = Path(tmp)
        for name in workload.names():
            (root / "services" / name).mkdir(parents=True)
        store = SqliteRunStore(root / "runs.db")
        rt = Runtime(store=store, bus=InProcessBus())
        request = DeployRequest(
            architecture=workload.document(),
            source_root=str(root),
            idempotency_key=uuid.uuid4().hex,
        )
        logging.disable(logging.INFO)
        try:
            run = dispatch_request(request, rt)
            phases = {
                phase.value: _phase(rt, run.run_id, phase, duplicates, rng)
                for phase in (Phase.BUILD, Phase.DEPLOY)
            }
            result = store.get_result(run.run_id)
        finally:
            logging.disable(logging.NOTSET)
            store.close()
    if result is None or result.status is not RunStatus.SUCCEEDED:
        raise RuntimeError("the aggregator benchmark's run did not succeed")
    applied = sum(p["completions"] for p in phases.values())
    seconds = sum(p["seconds"] for p in phases.values())
    return {
        "services": services,
        "duplicates": duplicates,
        "completions": applied,
        "seconds": round(seconds, 3),
        "per_second": round(applied / seconds),
        "phases": phases,
    }


def _phase(
    rt: Runtime, run_id: str, phase: Phase, duplicates: float, rng: random.Random
) -> dict[str, Any]:
    tasks = rt.store.get_tasks(run_id, phase)
    done = [
        TaskCompletion(
            run_id=run_id,
            task_id=t.task_id,
            phase=phase,
            service=t.service,
            status=TaskStatus.SUCCEEDED,
            image=f"bench.registry/{t.service}@sha256:{'0' * 64}" if phase is Phase.BUILD else None,
            url=f"https://{t.service}.bench.run" if phase is Phase.DEPLOY else None,
            started_at=utcnow(),
        )
        for t in tasks
    ]
    # Duplicates arrive after their original (a redelivery), anywhere after it.
    stream = list(done)
    for original in rng.sample(done, int(len(done) * duplicates)):
        at = stream.index(original)
        stream.insert(rng.randint(at + 1, len(stream)), original)
    started = time.perf_counter()
    for completion in stream:
        record_completion(completion, rt)
    seconds = time.perf_counter() - started
    return {
        "completions": len(stream),
        "seconds": round(seconds, 3),
        "per_second": round(len(stream) / seconds),
    }
