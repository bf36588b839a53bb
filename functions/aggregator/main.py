"""Aggregator: applies completion events once and moves each run to its next phase."""

from __future__ import annotations

import json

import flask
import functions_framework
from cloudevents.http import CloudEvent

from shared.core import entrypoints
from shared.core.control import sweep as sweep_runs
from shared.doors import function_runtime


@functions_framework.cloud_event
def aggregate(event: CloudEvent) -> None:
    function_runtime.handle_pubsub(event, "aggregator", entrypoints.on_completion)


@functions_framework.cloud_event
def build_events(event: CloudEvent) -> None:
    """Cloud Build's status changes (the `cloud-builds` topic) complete build tasks."""
    function_runtime.handle_pubsub(event, "aggregator", entrypoints.on_build_event)


@functions_framework.cloud_event
def dead_letters(event: CloudEvent) -> None:
    """Messages Pub/Sub gave up on: their tasks fail, so their runs finish."""
    function_runtime.handle_pubsub(event, "aggregator", entrypoints.on_dead_letter)


@functions_framework.http
def sweep(request: flask.Request) -> tuple[str, int, dict[str, str]]:
    """Called by Cloud Scheduler: fail overdue tasks, re-send lost ones, finish runs."""
    report = sweep_runs(function_runtime.runtime("aggregator"))
    body = {"runs": report.runs, "timed_out": report.timed_out, "republished": report.republished}
    return json.dumps(body), 200, {"Content-Type": "application/json"}
