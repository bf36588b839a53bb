"""Where `up` sends its request: a dispatcher's HTTP door, Pub/Sub, or the embedded core."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.architecture.loading import LoadedArchitecture
from shared.messages import DeployRequest, RunResult
from shared.settings import Settings


def submit_up(
    settings: Settings,
    loaded: LoadedArchitecture,
    file: str,
    options: dict[str, Any],
    endpoint: str | None,
    *,
    wait: bool,
    say: Callable[[str], None],
) -> tuple[RunResult, int | None]:
    """Run the deploy where the settings point; returns the result and an exit code that
    overrides the result's own (an interrupted embedded run), or None."""
    if endpoint:
        from shared.cli.remote import up_over_http

        request = DeployRequest(architecture=loaded.text, **options)
        return up_over_http(endpoint, request, settings.http_token), None
    if settings.bus_kind == "pubsub":
        from shared.cli.remote import up_over_pubsub

        request = DeployRequest(architecture=loaded.text, **options)
        return up_over_pubsub(settings, request), None
    from shared.cli.local import EXIT_INTERRUPTED, prepare, up_embedded

    prepare(settings.state_dir)
    request = DeployRequest(architecture_uri=str(Path(file).resolve()), **options)
    services = len(list(loaded.architecture.services()))
    result, interrupted = up_embedded(settings, request, services, wait=wait, say=say)
    return result, EXIT_INTERRUPTED if interrupted else None
