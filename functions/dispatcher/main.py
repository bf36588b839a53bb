"""The dispatcher: a request (Pub/Sub, HTTP or a GitHub push) becomes a run and its builds."""

from __future__ import annotations

from typing import Any

import flask
import functions_framework
from cloudevents.http import CloudEvent

from shared.core import handlers
from shared.doors import http_api, pubsub
from shared.doors import webhook as github_webhook


@functions_framework.cloud_event
def dispatch(event: CloudEvent) -> None:
    pubsub.handle_pubsub(event, "dispatcher", handlers.on_request)


@functions_framework.http
def dispatch_http(request: flask.Request) -> Any:
    rt = pubsub.runtime("dispatcher")
    return http_api.handle(request, rt, token=pubsub.http_token())


@functions_framework.http
def webhook(request: flask.Request) -> Any:
    rt = pubsub.runtime("dispatcher")
    config = github_webhook.WebhookConfig.from_settings(pubsub.settings())
    return github_webhook.handle(request, rt, config)
