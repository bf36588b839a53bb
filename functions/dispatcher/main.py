"""The dispatcher: a request (Pub/Sub, HTTP or a GitHub push) becomes a run and its builds."""

from __future__ import annotations

import functools
from typing import Any

import flask
import functions_framework
from cloudevents.http import CloudEvent

from shared import bootstrap
from shared.core import handlers
from shared.doors import http_api, pubsub
from shared.doors import webhook as github_webhook

runtime = functools.partial(bootstrap.for_function, "dispatcher")


@functions_framework.cloud_event
def dispatch(event: CloudEvent) -> None:
    pubsub.handle(event, handlers.on_request, runtime)


@functions_framework.http
def dispatch_http(request: flask.Request) -> Any:
    return http_api.handle(
        request,
        runtime(),
        token=bootstrap.http_token(),
        source_base=bootstrap.http_source_root(),
        origins=bootstrap.http_origins(),
    )


@functions_framework.http
def webhook(request: flask.Request) -> Any:
    config = github_webhook.WebhookConfig.from_settings(bootstrap.function_settings())
    return github_webhook.handle(request, runtime(), config)
