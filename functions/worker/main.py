"""Worker: claims one task message and builds or deploys that one service."""

from __future__ import annotations

import functools

import functions_framework
from cloudevents.http import CloudEvent

from shared import bootstrap
from shared.core import handlers
from shared.doors import pubsub

runtime = functools.partial(bootstrap.for_function, "worker")


@functions_framework.cloud_event
def run_task(event: CloudEvent) -> None:
    pubsub.handle(event, handlers.on_task, runtime)
