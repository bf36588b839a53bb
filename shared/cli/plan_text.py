"""`archdeploy plan` as text: tasks by phase, and the environment each deploy gets."""

from __future__ import annotations

import json
from collections.abc import Sequence

from shared.messages import TaskRecord


def render_plan(tasks: Sequence[TaskRecord], *, director: bool, as_json: bool) -> str:
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
                for key, value in sorted(t.spec.environment_vars.items()):
                    lines.append(f"      {key}={value or _unset(key, director)}")
    return "\n".join(lines)


def _unset(key: str, director: bool) -> str:
    if key != "SERVICE_DIRECTOR_URL":
        return '""'
    return "(the director's URL, once deployed)" if director else '"" (no director in the file)'
