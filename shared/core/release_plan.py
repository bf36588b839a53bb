"""A release's tasks and traffic shapes, as pure functions (no I/O).

A release run plans, for each service it would deploy, four tasks in place of the
deploy: stage (after its dependencies, so their stable URLs are known), verify (no
order), promote (after its dependencies: dependencies take traffic first) and revert
(after its dependents: they leave the new revisions first). Tasks exist only with their
run, so all are planned up front; the run engine (`shared.core.release`) releases them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence

from shared.architecture.cloud_run_limits import RELEASE_TAG_LENGTH
from shared.messages import Phase, TaskRecord, TaskStatus, task_id_for

# Cloud Run's rule for a traffic tag: lowercase letters, digits and `-`, starting with a
# letter; the tag's URL is TAG---SERVICE-..., so it is kept short.
TAG_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,45}$")
TAG_PREFIX = "rel-"
_RUN_HEX = re.compile(r"r-([0-9a-f]{10})[0-9a-f]*")


def release_tag(run_id: str) -> str:
    """The tag a run's staged revisions carry: `rel-` and 10 hex digits of the run id
    (of its digest, for ids of another shape), short enough for long service names."""
    found = _RUN_HEX.fullmatch(run_id)
    digits = found.group(1) if found else hashlib.sha256(run_id.encode()).hexdigest()[:10]
    tag = f"{TAG_PREFIX}{digits}"
    assert TAG_PATTERN.match(tag) and len(tag) == RELEASE_TAG_LENGTH, tag
    return tag


def plan_release(run_id: str, deploys: Sequence[TaskRecord]) -> list[TaskRecord]:
    """The stage, verify, promote and revert tasks of the run's deploy tasks."""
    names = {t.service for t in deploys}
    dependents: dict[str, list[str]] = {name: [] for name in names}
    for task in deploys:
        for dep in task.depends_on:
            if dep in dependents:
                dependents[dep].append(task.service)
    tasks = []
    for phase in (Phase.STAGE, Phase.VERIFY, Phase.PROMOTE, Phase.REVERT):
        for task in deploys:
            order = {
                Phase.STAGE: task.depends_on,
                Phase.VERIFY: [],
                Phase.PROMOTE: task.depends_on,
                Phase.REVERT: dependents[task.service],
            }[phase]
            tasks.append(_as(task, run_id, phase, [d for d in order if d in names]))
    return tasks


def plan_rollback(
    run_id: str, released: Sequence[TaskRecord], promoted: set[str]
) -> list[TaskRecord]:
    """A rollback run's tasks: the released run's reverts of the services it promoted,
    each after the dependents it promoted."""
    reverts = [t for t in released if t.phase is Phase.REVERT and t.service in promoted]
    return [
        _as(t, run_id, Phase.REVERT, [d for d in t.depends_on if d in promoted]) for t in reverts
    ]


def _as(task: TaskRecord, run_id: str, phase: Phase, depends_on: list[str]) -> TaskRecord:
    return TaskRecord(
        task_id=task_id_for(run_id, phase, task.service),
        run_id=run_id,
        phase=phase,
        service=task.service,
        dataflow=task.dataflow,
        status=TaskStatus.WAITING,
        depends_on=list(depends_on),
        service_account=task.service_account,
        spec=task.spec,
        health_check=task.health_check,
    )


def split_traffic(
    previous: Mapping[str, int] | None, revision: str, percent: int
) -> dict[str, int]:
    """`percent` to `revision`, the rest shared among what served before by its shares."""
    before = {r: p for r, p in (previous or {}).items() if r != revision and p > 0}
    rest = 100 - percent
    if not before or rest <= 0:
        return {revision: 100}
    total = sum(before.values())
    shares = {r: rest * p // total for r, p in before.items()}
    largest = max(before, key=lambda r: before[r])
    shares[largest] += rest - sum(shares.values())
    return {revision: percent, **{r: p for r, p in shares.items() if p > 0}}


def serving_tag(percents: Mapping[str, int], tags: Mapping[str, str], tag: str) -> bool:
    """Every revision taking traffic carries `tag`: the service is this release's own."""
    ours = {revision for t, revision in tags.items() if t == tag}
    serving = {revision for revision, p in percents.items() if p > 0}
    return bool(serving) and serving <= ours
