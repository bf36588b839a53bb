"""`archdeploy plan` as text: tasks by phase, and the environment each deploy gets."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from shared.core.dependency_urls import placeholder_owners
from shared.messages import TaskRecord

if TYPE_CHECKING:
    from shared.architecture.loading import LoadedArchitecture


def show_plan(
    loaded: LoadedArchitecture,
    dataflows: Sequence[str],
    director_url: str | None,
    *,
    as_json: bool,
) -> str:
    """Plan a run of `loaded` without starting it, and render it."""
    from shared.core.plan import plan_run

    result = plan_run(
        loaded.architecture,
        run_id="(plan)",
        dataflows=dataflows,
        director_url=director_url,
        source_root=str(loaded.base_dir or ""),
    )
    return render_plan(
        result.tasks,
        director=loaded.architecture.service_manager_spec is not None,
        as_json=as_json,
        notes=result.notes,
        director_url=director_url,
    )


def render_plan(
    tasks: Sequence[TaskRecord],
    *,
    director: bool,
    as_json: bool,
    notes: Mapping[str, Sequence[str]] | None = None,
    director_url: str | None = None,
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
    for phase in ("build", "director", "deploy"):
        chosen = [t for t in tasks if t.phase.value == phase]
        if chosen:
            lines.append(f"{phase}:")
        for t in chosen:
            after = f" after {', '.join(t.depends_on)}" if t.depends_on else ""
            lines.append(f"  {t.service}{after}")
            if phase != "build" and t.spec is not None:
                owners = placeholder_owners(t.depends_on)
                for key, value in sorted(t.spec.environment_vars.items()):
                    shown = value or _unset(key, director, owners, director_url)
                    lines.append(f"      {key}={shown}")
            if phase == "deploy":
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
