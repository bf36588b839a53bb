"""`archdeploy plan` as text: tasks by phase, and the environment each deploy gets."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from shared.core.dependency_urls import placeholder_owners
from shared.messages import TaskRecord


def render_plan(
    tasks: Sequence[TaskRecord],
    *,
    director: bool,
    as_json: bool,
    notes: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """`notes`: per service, why a dependency's URL variable was left out."""
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
                    lines.append(f"      {key}={value or _unset(key, director, owners)}")
            if phase == "deploy":
                lines.extend(f"      ({note})" for note in (notes or {}).get(t.service, ()))
    return "\n".join(lines)


def _unset(key: str, director: bool, owners: Mapping[str, str]) -> str:
    if key in owners:
        return f"({owners[key]}'s URL, once deployed)"
    if key != "SERVICE_DIRECTOR_URL":
        return '""'
    return "(the director's URL, once deployed)" if director else '"" (no director in the file)'
