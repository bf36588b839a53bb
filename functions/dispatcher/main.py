"""The dispatcher: a request (Pub/Sub, HTTP or a GitHub push) becomes a run and its builds.

`shared` loads on the first event, not at import (functions-framework, flask and
cloudevents, imported here, are the floor): docs/performance.md, "Cold start"."""

from __future__ import annotations

from typing import Any

import flask
import functions_framework
from cloudevents.http import CloudEvent


def runtime() -> Any:
    from shared import bootstrap

    return bootstrap.for_function("dispatcher")


@functions_framework.cloud_event
def dispatch(event: CloudEvent) -> None:
    from shared.core import handlers
    from shared.doors import pubsub

    pubsub.handle(event, handlers.on_request, runtime)


@functions_framework.http
def dispatch_http(request: flask.Request) -> Any:
    from shared import bootstrap
    from shared.doors import http_api

    return http_api.handle(
        request,
        runtime(),
        token=bootstrap.http_token(),
        source_base=bootstrap.http_source_root(),
        origins=bootstrap.http_origins(),
    )


@functions_framework.http
def webhook(request: flask.Request) -> Any:
    from shared import bootstrap
    from shared.doors import webhook as github_webhook

    config = github_webhook.WebhookConfig.from_settings(bootstrap.function_settings())
    return github_webhook.handle(request, runtime(), config)
