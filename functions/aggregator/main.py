"""Aggregator: applies completion events once and moves each run to its next phase.

`shared` loads on the first event, not at import (functions-framework, flask and
cloudevents, imported here, are the floor): docs/performance.md, "Cold start"."""

from __future__ import annotations

import json
from typing import Any

import flask
import functions_framework
from cloudevents.http import CloudEvent


def runtime() -> Any:
    from shared import bootstrap

    return bootstrap.for_function("aggregator")


@functions_framework.cloud_event
def aggregate(event: CloudEvent) -> None:
    from shared.core import handlers
    from shared.doors import pubsub

    pubsub.handle(event, handlers.on_completion, runtime)


@functions_framework.cloud_event
def build_events(event: CloudEvent) -> None:
    """Cloud Build's status changes (the `cloud-builds` topic) complete build tasks."""
    from shared.adapters.gcp import build_events as cloud_builds
    from shared.doors import pubsub

    pubsub.handle(event, cloud_builds.on_build_event, runtime)


@functions_framework.cloud_event
def dead_letters(event: CloudEvent) -> None:
    """Messages Pub/Sub gave up on: their tasks fail, so their runs finish."""
    from shared.adapters.gcp import build_events as cloud_builds
    from shared.doors import pubsub

    pubsub.handle(event, cloud_builds.on_dead_message, runtime)


@functions_framework.http
def sweep(request: flask.Request) -> tuple[str, int, dict[str, str]]:
    """Called by Cloud Scheduler: fail overdue tasks, re-send lost ones, finish runs."""
    from shared.core.control import sweep as sweep_runs

    report = sweep_runs(runtime())
    body = {"runs": report.runs, "timed_out": report.timed_out, "republished": report.republished}
    return json.dumps(body), 200, {"Content-Type": "application/json"}
