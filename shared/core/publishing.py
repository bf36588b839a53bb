"""Releasing waiting tasks: fill in what the run has produced since planning (built
images, the director's and dependencies' URLs), mark them pending, publish them."""

from __future__ import annotations

from typing import Any

from shared.core.dependency_urls import fill_dependency_urls
from shared.core.runtime import Runtime
from shared.messages import (
    TOPIC_TASKS,
    Phase,
    RunRecord,
    TaskCompletion,
    TaskMessage,
    TaskRecord,
    task_id_for,
)


def release(run: RunRecord, tasks: list[TaskRecord], rt: Runtime) -> list[TaskRecord]:
    """Move waiting tasks to pending with the run's outputs filled in, and publish them;
    returns those this call released (another admitter may have released the others).

    One store call for all of them (one transaction on SQLite), and the build images read
    once: opening a phase of 300 deploys used to cost 600 store round trips."""
    if not tasks:
        return []
    images = _built_images(run, tasks, rt)
    urls = _dependency_urls(run, tasks, rt)
    releases = [(t.task_id, _spec_updates(run, t, images, urls)) for t in tasks]
    released = rt.store.release_tasks(releases, now=rt.clock())
    publish_tasks(run, released, rt)
    return released


def _built_images(run: RunRecord, tasks: list[TaskRecord], rt: Runtime) -> dict[str, str]:
    if all(t.phase is Phase.BUILD for t in tasks):
        return {}
    if len(tasks) == 1:  # a single release (the director, a dependency chain): one read
        build = rt.store.get_task(task_id_for(run.run_id, Phase.BUILD, tasks[0].service))
        return {build.service: build.image} if build and build.image else {}
    builds = rt.store.get_tasks(run.run_id, Phase.BUILD)
    return {b.service: b.image for b in builds if b.image}


def _dependency_urls(run: RunRecord, tasks: list[TaskRecord], rt: Runtime) -> dict[str, str]:
    """The URLs the released deploys' dependencies reported (deployed or unchanged): they
    deployed before their dependents are released, so their tasks carry them."""
    wanted = {d for t in tasks if t.phase in _DEPLOYING for d in t.depends_on}
    if not wanted:
        return {}
    # A release's stages report their services' stable URLs, as deploys do.
    phase = Phase.STAGE if any(t.phase is Phase.STAGE for t in tasks) else Phase.DEPLOY
    if len(wanted) <= 3:  # a dependency chain: a read per dependency
        found = [rt.store.get_task(task_id_for(run.run_id, phase, d)) for d in wanted]
    else:
        found = list(rt.store.get_tasks(run.run_id, phase))
    return {t.service: t.url for t in found if t is not None and t.url and t.service in wanted}


_DEPLOYING = (Phase.DEPLOY, Phase.STAGE)


def _spec_updates(
    run: RunRecord, task: TaskRecord, images: dict[str, str], urls: dict[str, str]
) -> dict[str, Any]:
    if task.phase is Phase.BUILD or task.spec is None:
        return {}
    env = dict(task.spec.environment_vars)
    if task.phase in _DEPLOYING:
        env["SERVICE_DIRECTOR_URL"] = run.director_url or ""
        env = fill_dependency_urls(env, task.depends_on, urls)
    return {"image": images.get(task.service, task.spec.image), "environment_vars": env}


def publish_tasks(run: RunRecord, tasks: list[TaskRecord], rt: Runtime) -> None:
    if tasks:
        rt.bus.publish_many(TOPIC_TASKS, [(task_message(run, t), attributes(t)) for t in tasks])


def task_message(run: RunRecord, task: TaskRecord) -> TaskMessage:
    assert task.spec is not None
    return TaskMessage(
        run_id=run.run_id,
        task_id=task.task_id,
        phase=task.phase,
        service=task.service,
        dataflow=task.dataflow,
        service_account=task.service_account,
        spec=task.spec,
        project_id=run.project_id,
        region=task.spec.region or run.region,
        health_check=task.health_check,
        no_cache=run.no_cache,
    )


# A completion's attribute: its worker stored it before publishing it (see `report`).
STORED = "stored"


def attributes(task: TaskRecord | TaskCompletion) -> dict[str, str]:
    """What subscriptions filter on, and what a dead-letter handler reads."""
    return {
        "run_id": task.run_id,
        "task_id": task.task_id,
        "phase": task.phase.value,
        "service": task.service,
        "kind": "completion" if isinstance(task, TaskCompletion) else "task",
    }
