"""Worker: claims one task message and builds or deploys that one service."""

from __future__ import annotations

import functions_framework
from cloudevents.http import CloudEvent

from shared.core import entrypoints
from shared.doors import function_runtime


@functions_framework.cloud_event
def run_task(event: CloudEvent) -> None:
    function_runtime.handle_pubsub(event, "worker", entrypoints.on_task)
