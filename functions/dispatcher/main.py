"""The dispatcher: a request (Pub/Sub, HTTP or a GitHub push) becomes a run and its builds."""

from __future__ import annotations

from typing import Any

import flask
import functions_framework
from cloudevents.http import CloudEvent

from shared.core import entrypoints
from shared.doors import function_runtime, http_api
from shared.doors import webhook as github_webhook


@functions_framework.cloud_event
def dispatch(event: CloudEvent) -> None:
    function_runtime.handle_pubsub(event, "dispatcher", entrypoints.on_request)


@functions_framework.http
def dispatch_http(request: flask.Request) -> Any:
    rt = function_runtime.runtime("dispatcher")
    return http_api.handle(
        request,
        rt,
        token=function_runtime.http_token(),
        source_base=function_runtime.http_source_root(),
        origins=function_runtime.http_origins(),
    )


@functions_framework.http
def webhook(request: flask.Request) -> Any:
    rt = function_runtime.runtime("dispatcher")
    config = github_webhook.WebhookConfig.from_settings(function_runtime.settings())
    return github_webhook.handle(request, rt, config)
