"""Aggregator: applies completion events once and moves each run to its next phase."""

from __future__ import annotations

import functions_framework
from cloudevents.http import CloudEvent

from shared import entrypoints, function_runtime


@functions_framework.cloud_event
def aggregate(event: CloudEvent) -> None:
    function_runtime.handle_pubsub(event, "aggregator", entrypoints.on_completion)


@functions_framework.cloud_event
def build_events(event: CloudEvent) -> None:
    """Cloud Build's status changes (the `cloud-builds` topic) complete build tasks."""
    function_runtime.handle_pubsub(event, "aggregator", entrypoints.on_build_event)
