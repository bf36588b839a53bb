"""`archdeploy plan` as text: tasks by phase, and the environment each deploy gets."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from shared.core.dependency_urls import placeholder_owners
from shared.messages import TaskRecord

if TYPE_CHECKING:
    from shared.architecture.loading import LoadedArchitecture
    from shared.architecture.model import ReleaseSpec


def show_plan(
    loaded: LoadedArchitecture,
    dataflows: Sequence[str],
    director_url: str | None,
    *,
    as_json: bool,
    release: bool = False,
) -> str:
    """Plan a run of `loaded` without starting it, and render it. A release (`--release`,
    or `release:` in the file) plans stage, verify, promote and revert in place of deploys."""
    from shared.architecture.model import ReleaseSpec
    from shared.core.plan import plan_run

    arch = loaded.architecture
    spec = arch.release or (ReleaseSpec() if release else None)
    result = plan_run(
        arch,
        run_id="(plan)",
        dataflows=dataflows,
        director_url=director_url,
        source_root=str(loaded.base_dir or ""),
        release=spec is not None,
    )
    return render_plan(
        result.tasks,
        director=arch.service_manager_spec is not None,
        as_json=as_json,
        notes=result.notes,
        director_url=director_url,
        release=spec,
    )


def render_plan(
    tasks: Sequence[TaskRecord],
    *,
    director: bool,
    as_json: bool,
    notes: Mapping[str, Sequence[str]] | None = None,
    director_url: str | None = None,
    release: ReleaseSpec | None = None,
) -> str:
    """`notes`: per service, why a dependency's URL variable was left out;
    `director_url`: the one `--director-url` gave, which every deploy gets."""
    if as_json:
        return json.dumps(
            [t.model_dump(mode="json", exclude_none=True) for t in tasks],
            indent=2,
            ensure_ascii=False,
        )
    lines: list[str] = []
    for phase in ("build", "director", "deploy", "stage", "verify", "promote", "revert"):
        chosen = [t for t in tasks if t.phase.value == phase]
        if chosen:
            lines.append(_heading(phase, release))
        for t in chosen:
            word = "after dependents" if phase == "revert" else "after"
            after = f" {word} {', '.join(t.depends_on)}" if t.depends_on else ""
            lines.append(f"  {t.service}{after}")
            if phase == "verify":
                lines.extend(f"      check {name}" for name in _check_names(t))
            if phase in ("director", "deploy", "stage") and t.spec is not None:
                owners = placeholder_owners(t.depends_on)
                for key, value in sorted(t.spec.environment_vars.items()):
                    shown = value or _unset(key, director, owners, director_url)
                    lines.append(f"      {key}={shown}")
            if phase in ("deploy", "stage"):
                lines.extend(f"      ({note})" for note in (notes or {}).get(t.service, ()))
    return "\n".join(lines)


def _unset(key: str, director: bool, owners: Mapping[str, str], director_url: str | None) -> str:
    if key == "SERVICE_DIRECTOR_URL" and director_url:
        return director_url
    if key in owners:
        return f"({owners[key]}'s URL, once deployed)"
    if key != "SERVICE_DIRECTOR_URL":
        return '""'
    return "(the director's URL, once deployed)" if director else '"" (no director in the file)'


_HEADINGS = {
    "stage": "stage (changed services only: a new revision, tagged, taking no traffic):",
    "verify": "verify (each check on the staged revision's tag URL):",
    "revert": "revert (only if the release stops before full promotion):",
}


def _heading(phase: str, release: ReleaseSpec | None) -> str:
    if phase == "promote" and release is not None:
        if release.strategy != "steps":
            return "promote (all at once, dependencies first):"
        steps = ", ".join(f"{p}%" for p in release.percents)
        return f"promote (steps {steps}, soak {release.soak:g}s, checks again at each):"
    return _HEADINGS.get(phase, f"{phase}:")


def _check_names(task: TaskRecord) -> list[str]:
    """The checks verify runs: the service's `verify`, else its health check."""
    if task.spec is not None and task.spec.verify:
        return [check.name for check in task.spec.verify]
    if task.health_check is not None:
        return [f"http {task.health_check.path} (its health check)"]
    return ["none: healthy at staging is enough"]
