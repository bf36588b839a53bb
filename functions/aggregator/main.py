"""Aggregator: applies completion events once and moves each run to its next phase."""

from __future__ import annotations

import json

import flask
import functions_framework
from cloudevents.http import CloudEvent

from shared.core import handlers
from shared.core.control import sweep as sweep_runs
from shared.doors import pubsub


@functions_framework.cloud_event
def aggregate(event: CloudEvent) -> None:
    pubsub.handle_pubsub(event, "aggregator", handlers.on_completion)


@functions_framework.cloud_event
def build_events(event: CloudEvent) -> None:
    """Cloud Build's status changes (the `cloud-builds` topic) complete build tasks."""
    pubsub.handle_pubsub(event, "aggregator", handlers.on_build_event)


@functions_framework.cloud_event
def dead_letters(event: CloudEvent) -> None:
    """Messages Pub/Sub gave up on: their tasks fail, so their runs finish."""
    pubsub.handle_pubsub(event, "aggregator", handlers.on_dead_letter)


@functions_framework.http
def sweep(request: flask.Request) -> tuple[str, int, dict[str, str]]:
    """Called by Cloud Scheduler: fail overdue tasks, re-send lost ones, finish runs."""
    report = sweep_runs(pubsub.runtime("aggregator"))
    body = {"runs": report.runs, "timed_out": report.timed_out, "republished": report.republished}
    return json.dumps(body), 200, {"Content-Type": "application/json"}
