"""`up` on the Pub/Sub bus: publish the request and follow the run the functions drive."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console

from shared.errors import UsageError
from shared.messages import DeployRequest, RunResult
from shared.ports import RunStore


def up_over_pubsub(settings: Any, request: DeployRequest, err: Console) -> RunResult:
    """Publish the request on the requests topic and follow the run in the store, as the
    deployed functions (or `archdeploy dev`'s) run it. Sources must be readable by the
    workers: a pushed commit, `gs://`, or a filesystem they share (dev)."""
    import uuid

    from shared.bootstrap import make_bus, make_store
    from shared.cli.progress import follow
    from shared.core.handlers import run_id_for
    from shared.messages import TOPIC_REQUESTS

    key = request.idempotency_key or f"cli-{uuid.uuid4().hex}"
    request = request.model_copy(update={"idempotency_key": key})
    make_bus(settings).publish(TOPIC_REQUESTS, request, attributes={"kind": "request"})
    run_id = run_id_for(key)
    err.print(f"run {run_id} published to {settings.topic_requests} ({settings.project})")
    store = make_store(settings)
    _await_run(store, run_id)
    return follow(store, run_id, stream=sys.stderr, timeout=settings.run_deadline_seconds)


def _await_run(store: RunStore, run_id: str, timeout: float = 60.0) -> None:
    """The dispatcher creates the run when it gets the message: wait for it to appear."""
    import time

    deadline = time.monotonic() + timeout
    while store.get_run(run_id) is None:
        if time.monotonic() > deadline:
            raise UsageError(
                f"run {run_id} was published but no dispatcher created it in "
                f"{timeout:g}s: is the dispatcher function subscribed?"
            )
        time.sleep(0.2)
