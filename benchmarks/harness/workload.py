"""Synthetic architectures, their task durations, and the bounds a run is measured against.

A workload is `services` services in one dataflow, optionally a director, optionally
grouped into dependency chains of `chain` services (each deploys after the previous one).
Task durations are fixed or drawn from a seeded distribution, per (phase, service), so the
critical path can be computed exactly for the very durations the fake deployer will use.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Distribution = Literal["fixed", "uniform", "lognormal"]
Mode = Literal["sleep", "busy"]

DIRECTOR = "director"


@dataclass(frozen=True)
class Durations:
    """How long each build and deploy takes: `mean` seconds, spread by `distribution`."""

    mean: float
    distribution: Distribution = "fixed"
    seed: int = 8

    def draw(self, keys: list[str]) -> dict[str, float]:
        rng = random.Random(self.seed)
        if self.distribution == "fixed":
            return dict.fromkeys(keys, self.mean)
        if self.distribution == "uniform":  # mean +- 50 %
            return {k: rng.uniform(0.5 * self.mean, 1.5 * self.mean) for k in keys}
        sigma = 0.5  # lognormal with the given mean: a few slow stragglers
        mu = math.log(self.mean) - sigma**2 / 2 if self.mean > 0 else 0.0
        return {k: rng.lognormvariate(mu, sigma) if self.mean > 0 else 0.0 for k in keys}

    def label(self) -> str:
        ms = f"{self.mean * 1000:g} ms"
        return ms if self.distribution == "fixed" else f"{self.distribution} {ms}"


@dataclass(frozen=True)
class Workload:
    services: int
    durations: Durations
    director: bool = False
    chain: int = 1  # services per dependency chain; 1 = no dependencies
    mode: Mode = "sleep"

    def names(self) -> list[str]:
        return [f"svc-{i:04d}" for i in range(self.services)]

    def dependencies(self) -> dict[str, list[str]]:
        """Service -> the services it deploys after (the previous one in its chain)."""
        names = self.names()
        return {
            name: [names[i - 1]] if self.chain > 1 and i % self.chain else []
            for i, name in enumerate(names)
        }

    def task_keys(self) -> list[str]:
        """`phase:service` for every task the run will have."""
        keys = [f"build:{n}" for n in self.names()] + [f"deploy:{n}" for n in self.names()]
        if self.director:
            keys += [f"build:{DIRECTOR}", f"director:{DIRECTOR}"]
        return keys

    def task_seconds(self) -> dict[str, float]:
        return self.durations.draw(self.task_keys())

    def document(self) -> str:
        """The architecture as the JSON text a `DeployRequest` carries."""
        deps = self.dependencies()
        services = {name: _service(name, deps[name]) for name in self.names()}
        doc: dict[str, Any] = {
            "name": "bench",
            "project_id": "bench-project",
            "region": "europe-west1",
            "dataflows": {"bench": {"services": services}},
        }
        if self.director:
            doc["service_manager_spec"] = _service(DIRECTOR, [])
        return json.dumps(doc)

    def label(self) -> str:
        shape = f"chains of {self.chain}" if self.chain > 1 else "independent"
        extra = " + director" if self.director else ""
        return f"N={self.services} {shape}{extra}, {self.durations.label()} {self.mode}"


def _service(name: str, dependencies: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "service_account": f"{name}@bench-project.iam.gserviceaccount.com",
        "dependencies": dependencies,
        "deployment": {"source_path": f"services/{name}", "image_repo": "bench"},
    }


@dataclass(frozen=True)
class Bounds:
    """What a run of the workload cannot beat, and what simpler schedulers take."""

    critical_path: float  # slowest build, then the director's deploy, then the longest chain
    sequential: float  # every task one after the other
    capped: float  # with at most `cap` tasks at once (list scheduling lower bound)


def bounds(workload: Workload, seconds: Mapping[str, float], cap: int) -> Bounds:
    names = workload.names()
    builds = [seconds[f"build:{n}"] for n in names]
    if workload.director:
        builds.append(seconds[f"build:{DIRECTOR}"])
    director = seconds.get(f"director:{DIRECTOR}", 0.0)
    deploys = [seconds[f"deploy:{n}"] for n in names]
    chain = longest_chain(workload.dependencies(), {n: seconds[f"deploy:{n}"] for n in names})
    return Bounds(
        critical_path=max(builds) + director + chain,
        sequential=sum(builds) + director + sum(deploys),
        capped=_capped(builds, cap) + director + max(chain, _capped(deploys, cap)),
    )


def longest_chain(dependencies: Mapping[str, list[str]], seconds: Mapping[str, float]) -> float:
    """The longest sum of deploy times along a `dependencies` path (a DAG)."""
    finish: dict[str, float] = {}

    def done(name: str) -> float:
        if name not in finish:
            before = [done(d) for d in dependencies.get(name, []) if d in seconds]
            finish[name] = max(before, default=0.0) + seconds[name]
        return finish[name]

    return max((done(n) for n in seconds), default=0.0)


def _capped(durations: list[float], cap: int) -> float:
    """`ceil(n / cap) x t` for equal durations; else the list-scheduling lower bound."""
    if not durations:
        return 0.0
    if len(set(durations)) == 1:
        return math.ceil(len(durations) / cap) * durations[0]
    return max(max(durations), sum(durations) / cap)
