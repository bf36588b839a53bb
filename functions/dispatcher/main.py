"""Dispatcher: a DeployRequest (Pub/Sub or HTTP) becomes a run and its build tasks."""

from __future__ import annotations

from typing import Any

import flask
import functions_framework
from cloudevents.http import CloudEvent

from shared import entrypoints, function_runtime, http_api


@functions_framework.cloud_event
def dispatch(event: CloudEvent) -> None:
    function_runtime.handle_pubsub(event, "dispatcher", entrypoints.on_request)


@functions_framework.http
def dispatch_http(request: flask.Request) -> Any:
    rt = function_runtime.runtime("dispatcher")
    return http_api.handle(request, rt, token=function_runtime.http_token())
