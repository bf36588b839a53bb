"""Runs through the dev topology: the Pub/Sub and Firestore emulators, push subscriptions,
and the three functions under functions-framework (`shared.devserver.topology.DevTopology`),
with a worker whose builds and deploys sleep (the shim in benchmarks/devfunctions)."""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness.embedded import phase_edges
from benchmarks.harness.stats import p50_p99, ratio
from benchmarks.harness.workload import Durations, Workload, bounds
from shared.messages import DeployRequest, Phase, RunResult, RunStatus, TaskRecord

SHIMS = Path(__file__).resolve().parents[1] / "devfunctions"
REPO = SHIMS.parents[1]
RUN_TIMEOUT = 180.0
THREADS = 64  # gunicorn threads per function: room for every task of N=30 at once


def available() -> str | None:
    """None if the dev topology can be started here, else why not."""
    try:
        from shared.devserver.topology import DevTopology  # noqa: F401
    except ImportError as exc:
        return f"shared.devserver.topology is not importable: {exc}"
    from shared.devserver.emulators import emulator_command

    try:
        emulator_command("pubsub", "127.0.0.1:1", "p", Path(tempfile.gettempdir()))
    except Exception as exc:
        return f"the emulators are missing: {exc}"
    return None


def run_cases(
    services: list[int], seconds: float, keep: Path | None = None
) -> list[dict[str, Any]]:
    """Start the topology once, run one deployment per entry of `services`, stop it.
    With `keep`, the state (the functions' logs among it) stays there for a look."""
    from shared.devserver.topology import DevTopology

    with tempfile.TemporaryDirectory(prefix="archdeploy-bench-dev-") as tmp:
        root = keep or Path(tmp)
        env = {
            "ARCHDEPLOY_BENCH_TASK_SECONDS": str(seconds),
            "THREADS": str(THREADS),
            "PYTHONPATH": os.pathsep.join([str(SHIMS), str(REPO)]),
        }
        started = time.perf_counter()
        topo = DevTopology(
            state_dir=root / "state",
            project=f"bench-{uuid.uuid4().hex[:6]}",
            extra_env=env,
            functions_root=SHIMS,
        )
        with topo:
            startup = time.perf_counter() - started
            rows = [_run(topo, Workload(n, Durations(seconds)), root) for n in services]
        for row in rows:
            row["topology_start_s"] = round(startup, 2)
        return rows


def _run(topo: Any, workload: Workload, root: Path) -> dict[str, Any]:
    for name in workload.names():
        (root / "services" / name).mkdir(parents=True, exist_ok=True)
    request = DeployRequest(
        architecture=workload.document(),
        source_root=str(root),
        idempotency_key=uuid.uuid4().hex,
        requested_by="bench",
    )
    store = topo.store()
    began = time.time()
    started = time.perf_counter()
    run_id = _post(topo.http_url, request)
    result = _wait(lambda: store.get_result(run_id))
    makespan = time.perf_counter() - started
    if result.status is not RunStatus.SUCCEEDED:
        raise RuntimeError(f"dev topology run ended {result.status.value}: {result.errors[:3]}")
    tasks: list[TaskRecord] = store.get_tasks(run_id)
    limits = bounds(workload, workload.task_seconds(), workload.services)
    return {
        "mode": "dev-topology",
        "case": f"dev-N{workload.services}-{workload.durations.label().replace(' ', '')}",
        "workload": workload.label(),
        "services": workload.services,
        "cap": THREADS,
        "critical_path_s": round(limits.critical_path, 4),
        "capped_bound_s": round(limits.capped, 4),
        "sequential_s": round(limits.sequential, 4),
        "makespan_s": round(makespan, 4),
        "vs_critical_path": ratio(makespan, limits.critical_path),
        **_latencies(tasks, result, began),
    }


def _latencies(tasks: list[TaskRecord], result: RunResult, began: float) -> dict[str, Any]:
    claimed = [
        t.started_at.timestamp() - t.released_at.timestamp()
        for t in tasks
        if t.released_at and t.started_at
    ]
    builds = [t.finished_at for t in tasks if t.phase is Phase.BUILD and t.finished_at]
    deploys = [t for t in tasks if t.phase is Phase.DEPLOY]
    released = [t.released_at for t in deploys if t.released_at]
    finished = [t.finished_at for t in deploys if t.finished_at]
    row: dict[str, Any] = {"release_to_start_ms": p50_p99(claimed), **phase_edges(tasks, began)}
    if builds and released:
        row["build_to_deploy_handoff_ms"] = round(
            (min(released) - max(builds)).total_seconds() * 1000, 1
        )
    if finished and result.finished_at:
        row["last_task_to_result_ms"] = round(
            (result.finished_at - max(finished)).total_seconds() * 1000, 1
        )
    return row


def _post(url: str, request: DeployRequest) -> str:
    body = request.model_dump_json(exclude_none=True).encode()
    call = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(call, timeout=60) as answer:
        return str(json.loads(answer.read())["run_id"])


def _wait(poll: Callable[[], RunResult | None]) -> RunResult:
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        result = poll()
        if result is not None:
            return result
        time.sleep(0.05)
    raise TimeoutError(f"no result after {RUN_TIMEOUT:.0f} s")
