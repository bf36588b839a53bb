"""What the core is compared with: the Go seed's thread pool, and one task at a time."""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from benchmarks.harness.deployer import spend
from benchmarks.harness.workload import DIRECTOR, Workload


def thread_pool(workload: Workload, seconds: Mapping[str, float], cap: int) -> float:
    """The seed's `DeploymentManager`: every build at once on a pool of `cap` threads, then
    the director, then every deploy at once (dependency level by level). No events, no
    store. Returns the makespan in seconds."""
    names = workload.names()
    builds = [f"build:{n}" for n in names] + ([f"build:{DIRECTOR}"] if workload.director else [])
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=cap) as pool:
        list(pool.map(lambda key: spend(seconds[key], workload.mode), builds))
        if workload.director:
            spend(seconds[f"director:{DIRECTOR}"], workload.mode)
        for level in levels(workload.dependencies()):
            list(pool.map(lambda name: spend(seconds[f"deploy:{name}"], workload.mode), level))
    return time.perf_counter() - started


def sequential(workload: Workload, seconds: Mapping[str, float]) -> float:
    """Every task, one after the other, measured (for `busy` tasks and small runs)."""
    started = time.perf_counter()
    for key in workload.task_keys():
        spend(seconds[key], workload.mode)
    return time.perf_counter() - started


def levels(dependencies: Mapping[str, list[str]]) -> list[list[str]]:
    """Services grouped so each group's dependencies are all in earlier groups."""
    depth: dict[str, int] = {}

    def level(name: str) -> int:
        if name not in depth:
            depth[name] = 1 + max((level(d) for d in dependencies.get(name, [])), default=-1)
        return depth[name]

    grouped: dict[int, list[str]] = {}
    for name in dependencies:
        grouped.setdefault(level(name), []).append(name)
    return [grouped[k] for k in sorted(grouped)]
