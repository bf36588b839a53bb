"""Which waiting task goes first when a cap holds tasks back: the longest remaining path.

Pure: no I/O. At planning (`shared.core.dispatcher`), every task gets a `priority`, the
estimated seconds from its start to the end of the longest path of work that waits on
it, and a `rank`, its place in that order (file order breaks ties). Admission
(`shared.core.run_engine`) then takes the waiting tasks by rank (`admission_order`; the
store reads them in that order, `RunStore.waiting_tasks`).

The paths, as the run engine runs them:

- a deploy: its own deploy, then the longest chain of deploys that depend on it
  (`dependencies`), transitively;
- the director's deploy: itself, then the longest deploy chain (every dataflow deploy
  waits for the director's URL);
- a build: its own build, then the director's deploy and the longest deploy chain. The
  deploy phase opens once every build has succeeded, so the whole deploy work waits on
  each build, and builds are ordered longest first (what bounds the build phase under a
  cap: a long build started last is what makes the phase late).

Estimates come from earlier runs of the same service in the same project (kept in the
store, smoothed by `shared.store_rules.smoothed`); a service never seen takes the
phase's default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from shared.messages import Phase, TaskRecord, TaskStatus

# Estimates for a task never seen before, in seconds: a Cloud Build and a Cloud Run deploy.
DEFAULT_SECONDS = {Phase.BUILD: 60.0, Phase.DIRECTOR: 20.0, Phase.DEPLOY: 20.0}
_REMEMBERED = (Phase.BUILD, Phase.DIRECTOR, Phase.DEPLOY)


def duration_key(phase: Phase, service: str) -> str:
    """How a service's smoothed duration is keyed in the store."""
    return f"{phase.value}:{service}"


def estimate(durations: Mapping[str, float], phase: Phase, service: str) -> float:
    return durations.get(duration_key(phase, service), DEFAULT_SECONDS.get(phase, 0.0))


def prioritise(tasks: Sequence[TaskRecord], durations: Mapping[str, float]) -> list[TaskRecord]:
    """`tasks` with `priority` and `rank` set (see the module's docstring), same order."""
    deploys = {t.service: t for t in tasks if t.phase is Phase.DEPLOY}
    tails = deploy_tails(deploys.values(), durations)
    chain = max(tails.values(), default=0.0)
    director = next((t for t in tasks if t.phase is Phase.DIRECTOR), None)
    director_s = estimate(durations, Phase.DIRECTOR, director.service) if director else 0.0
    after_builds = director_s + chain

    def priority(task: TaskRecord) -> float:
        if task.phase is Phase.BUILD:
            return estimate(durations, Phase.BUILD, task.service) + after_builds
        if task.phase is Phase.DIRECTOR:
            return after_builds
        if task.phase is Phase.DEPLOY:
            return tails[task.service]
        return 0.0  # rollbacks are released all at once

    scored = [round(priority(t), 4) for t in tasks]
    order = sorted(range(len(tasks)), key=lambda i: (-scored[i], i))
    rank = {index: place for place, index in enumerate(order)}
    return [
        t.model_copy(update={"priority": scored[i], "rank": rank[i]}) for i, t in enumerate(tasks)
    ]


def deploy_tails(deploys: Iterable[TaskRecord], durations: Mapping[str, float]) -> dict[str, float]:
    """Service -> its deploy plus the longest chain of deploys waiting on it.

    Iterative (dependents before the deploys they wait on), so a chain of any length is
    fine; validation has refused cycles, and a task in one is left at its own duration."""
    tasks = {t.service: t for t in deploys}
    dependents: dict[str, list[str]] = {name: [] for name in tasks}
    for task in tasks.values():
        for dependency in task.depends_on:
            if dependency in dependents:
                dependents[dependency].append(task.service)
    waiting = {name: len(after) for name, after in dependents.items()}
    ready = [name for name, n in waiting.items() if n == 0]
    tails: dict[str, float] = {}
    while ready:
        name = ready.pop()
        own = estimate(durations, Phase.DEPLOY, name)
        tails[name] = own + max((tails[d] for d in dependents[name]), default=0.0)
        for dependency in tasks[name].depends_on:
            if dependency in waiting:
                waiting[dependency] -= 1
                if waiting[dependency] == 0:
                    ready.append(dependency)
    for name in tasks:
        tails.setdefault(name, estimate(durations, Phase.DEPLOY, name))
    return tails


def admission_order(tasks: Iterable[TaskRecord]) -> list[TaskRecord]:
    """Waiting tasks in the order a cap admits them: by rank (ties keep their order)."""
    return sorted(tasks, key=lambda t: t.rank)


def duration_samples(tasks: Iterable[TaskRecord]) -> dict[str, float]:
    """What a finished run teaches: how long each task that did its work took.

    Succeeded and not reused (a cached image or an unchanged service took no real time)."""
    return {
        duration_key(t.phase, t.service): t.duration_seconds
        for t in tasks
        if t.phase in _REMEMBERED
        and t.status is TaskStatus.SUCCEEDED
        and not t.reused
        and t.duration_seconds is not None
    }
