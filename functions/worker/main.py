"""Worker: claims one task message and builds or deploys that one service."""

from __future__ import annotations

import functions_framework
from cloudevents.http import CloudEvent

from shared.core import handlers
from shared.doors import pubsub


@functions_framework.cloud_event
def run_task(event: CloudEvent) -> None:
    pubsub.handle_pubsub(event, "worker", handlers.on_task)
