"""The capped heterogeneous case: where admission order decides the makespan.

300 services (and a director), builds and deploys lognormal with a median of 100 ms and
sigma 0.6 (seeded), services grouped into dependency chains of 1 to 5 deploys, at most 30
builds and 30 deploys at once. Each run goes through the real core (embedded: in-process
bus, SQLite store) in one store, so the durations earlier runs recorded there are what
the priorities are computed from. Admission by priority is timed beside FIFO admission
(file order: the same run with its stored ranks cleared) in the same process.
"""

from __future__ import annotations

import gc
import heapq
import json
import logging
import math
import random
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from benchmarks.harness.deployer import BenchDeployer
from benchmarks.harness.embedded import as_up_starts_a_run
from benchmarks.harness.workload import DIRECTOR, longest_chain
from shared.adapters.local.sqlite_store import SqliteRunStore
from shared.architecture.loading import parse_architecture
from shared.bootstrap import embedded
from shared.core.plan import plan_run
from shared.core.priority import admission_order, prioritise
from shared.messages import DeployRequest, Phase, RunRecord, RunStatus, TaskRecord
from shared.ports import RunStore
from shared.settings import Settings

RUN_TIMEOUT = 600.0


@dataclass(frozen=True)
class CappedWorkload:
    services: int = 300
    median: float = 0.1
    sigma: float = 0.6
    longest: int = 5  # deploys per chain, at most
    cap: int = 30
    seed: int = 19

    def names(self) -> list[str]:
        return [f"svc-{i:04d}" for i in range(self.services)]

    def chains(self) -> list[list[str]]:
        rng, names, chains = random.Random(self.seed), self.names(), []
        while names:
            size = rng.randint(1, self.longest)
            chains.append(names[:size])
            names = names[size:]
        return chains

    def dependencies(self) -> dict[str, list[str]]:
        return {n: [c[i - 1]] if i else [] for c in self.chains() for i, n in enumerate(c)}

    def seconds(self) -> dict[str, float]:
        rng = random.Random(self.seed + 1)
        keys = [f"build:{n}" for n in self.names()] + [f"deploy:{n}" for n in self.names()]
        keys += [f"build:{DIRECTOR}", f"director:{DIRECTOR}"]
        return {k: rng.lognormvariate(math.log(self.median), self.sigma) for k in keys}

    def document(self) -> str:
        deps = self.dependencies()
        services = {n: _service(n, deps[n]) for n in self.names()}
        return json.dumps(
            {
                "name": "bench",
                "project_id": "bench-project",
                "region": "europe-west1",
                "service_manager_spec": _service(DIRECTOR, []),
                "dataflows": {"bench": {"services": services}},
            }
        )

    def bounds(self, seconds: dict[str, float]) -> dict[str, float]:
        """What no schedule of this engine can beat. Phases are barriers (every build,
        then the director's deploy, then the deploys), so the bound is the sum of each
        phase's own bound: max(longest task or chain, work / cap). `unphased` is the
        looser max(critical path, all the work / cap) of an engine without barriers."""
        builds = [v for k, v in seconds.items() if k.startswith("build:")]
        deploys = {k.split(":", 1)[1]: v for k, v in seconds.items() if k.startswith("deploy:")}
        chain = longest_chain(self.dependencies(), deploys)
        director = seconds[f"director:{DIRECTOR}"]
        build_phase = max(max(builds), sum(builds) / self.cap)
        deploy_phase = max(chain, sum(deploys.values()) / self.cap)
        critical = max(builds) + director + chain
        work = (sum(builds) + director + sum(deploys.values())) / self.cap
        return {
            "bound_s": build_phase + director + deploy_phase,
            "build_phase_bound_s": build_phase,
            "deploy_phase_bound_s": deploy_phase,
            "critical_path_s": critical,
            "unphased_bound_s": max(critical, work),
        }


def simulated(workload: CappedWorkload, seconds: dict[str, float], *, fifo: bool) -> float:
    """The makespan with no overhead at all: each phase list-scheduled under the cap in
    the core's admission order (its own `prioritise`, fed the true durations), or in file
    order. What is left between this and the measured makespan is per-task overhead."""
    arch = parse_architecture(workload.document()).architecture
    tasks = plan_run(arch, run_id="sim").tasks
    if not fifo:
        tasks = admission_order(prioritise(tasks, seconds))
    builds = [t for t in tasks if t.phase is Phase.BUILD]
    deploys = [t for t in tasks if t.phase is Phase.DEPLOY]
    director = seconds[f"director:{DIRECTOR}"]
    return (
        _list_schedule(builds, seconds, workload.cap)
        + director
        + _list_schedule(deploys, seconds, workload.cap)
    )


def _list_schedule(tasks: list[TaskRecord], seconds: dict[str, float], cap: int) -> float:
    """Whenever fewer than `cap` run, start the first task in `tasks` whose dependencies
    have finished; returns when the last one ends."""
    done: set[str] = set()
    running: list[tuple[float, str]] = []
    waiting, now = list(tasks), 0.0
    while waiting or running:
        ready = [t for t in waiting if all(d in done for d in t.depends_on)]
        for task in ready[: cap - len(running)]:
            waiting.remove(task)
            key = f"{task.phase.value}:{task.service}"
            heapq.heappush(running, (now + seconds[key], task.service))
        now, name = heapq.heappop(running)
        done.add(name)
    return now


def _service(name: str, dependencies: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "service_account": f"{name}@bench-project.iam.gserviceaccount.com",
        "dependencies": dependencies,
        "deployment": {"source_path": f"services/{name}", "image_repo": "bench"},
    }


class SharedStore:
    """The one store every run of the case uses (a run's system leaves it open). With
    `fifo`, runs are created with their ranks cleared: admission then keeps the stored
    (file) order, as it did before priorities."""

    def __init__(self, inner: Any, *, fifo: bool = False) -> None:
        self._inner = inner
        self.fifo = fifo

    def __getattr__(self, name: str) -> Any:
        # Kept on the proxy once looked up: a run calls the store thousands of times, and
        # the proxy's own cost is not the subject.
        value = getattr(self._inner, name)
        setattr(self, name, value)
        return value

    def close(self) -> None:
        return None

    def create_run(
        self, run: RunRecord, tasks: list[TaskRecord], architecture: str
    ) -> tuple[RunRecord, bool]:
        # Copied only for FIFO: a critical-path-first run must not pay for the other's.
        plain = (
            [t.model_copy(update={"priority": 0.0, "rank": 0}) for t in tasks]
            if self.fifo
            else tasks
        )
        created: tuple[RunRecord, bool] = self._inner.create_run(run, plain, architecture)
        return created


def measure(workload: CappedWorkload, repeat: int) -> dict[str, Any]:
    """One warm-up run (it records the durations), then `repeat` runs of each admission,
    alternating; the medians and every makespan."""
    seconds = workload.seconds()
    with tempfile.TemporaryDirectory(prefix="archdeploy-capped-") as tmp:
        root = Path(tmp)
        for name in [*workload.names(), DIRECTOR]:
            (root / "services" / name).mkdir(parents=True)
        sqlite = SqliteRunStore(root / "state" / "runs.db")
        try:
            by_priority, fifo = SharedStore(sqlite), SharedStore(sqlite, fifo=True)
            _run(workload, seconds, root, by_priority)  # warm-up: fills the durations
            times: dict[str, list[float]] = {"priority": [], "fifo": []}
            for _ in range(repeat):
                times["priority"].append(_run(workload, seconds, root, by_priority))
                times["fifo"].append(_run(workload, seconds, root, fifo))
        finally:
            sqlite.close()
    row: dict[str, Any] = {k: round(v, 4) for k, v in workload.bounds(seconds).items()}
    for name, runs in times.items():
        row[f"{name}_s"] = round(sorted(runs)[len(runs) // 2], 4)
        row[f"{name}_runs_s"] = [round(r, 4) for r in runs]
    for name in ("priority", "fifo"):
        row[f"{name}_no_overhead_s"] = round(simulated(workload, seconds, fifo=name == "fifo"), 4)
    row["priority_vs_bound"] = round(row["priority_s"] / row["bound_s"], 3)
    row["fifo_vs_bound"] = round(row["fifo_s"] / row["bound_s"], 3)
    return row


def _run(workload: CappedWorkload, seconds: dict[str, float], root: Path, store: Any) -> float:
    settings = Settings(
        parallelism=workload.cap,
        state_dir=root / "state",
        build_concurrency=workload.cap,
        deploy_concurrency=workload.cap,
    )
    system = embedded(settings, deployer=BenchDeployer(seconds), store=cast(RunStore, store))
    request = DeployRequest(
        architecture=workload.document(),
        source_root=str(root),
        idempotency_key=uuid.uuid4().hex,
        requested_by="bench",
    )
    try:
        logging.disable(logging.INFO)
        as_up_starts_a_run()
        started = time.perf_counter()
        run = system.submit(request)
        result = system.wait(run.run_id, timeout=RUN_TIMEOUT)
        makespan = time.perf_counter() - started
    finally:
        gc.unfreeze()
        logging.disable(logging.NOTSET)
        system.close()
    if result.status is not RunStatus.SUCCEEDED:
        raise RuntimeError(f"benchmark run ended {result.status.value}: {result.errors[:3]}")
    return makespan
