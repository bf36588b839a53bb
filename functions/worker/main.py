"""Worker: claims one task message and builds or deploys that one service.

`shared` loads on the first event, not at import (functions-framework and cloudevents,
imported here, are the floor): docs/performance.md, "Cold start"."""

from __future__ import annotations

from typing import Any

import functions_framework
from cloudevents.http import CloudEvent


def runtime() -> Any:
    from shared import bootstrap

    return bootstrap.for_function("worker")


@functions_framework.cloud_event
def run_task(event: CloudEvent) -> None:
    from shared.core import handlers
    from shared.doors import pubsub

    pubsub.handle(event, handlers.on_task, runtime)
