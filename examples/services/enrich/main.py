"""enrich: the second step of the `orders` dataflow. POST /enrich adds fields to an order.

`registration.py` is copied in at build time (config_templates in architecture.yaml).
"""

from __future__ import annotations

import os
from typing import Any

from registration import ServiceHandler, serve


def describe(handler: ServiceHandler) -> tuple[int, dict[str, Any]]:
    return 200, {"service": handler.registration.name, "role": "enriches orders"}


def enrich(handler: ServiceHandler) -> tuple[int, dict[str, Any]]:
    order = handler.read_json()
    if not isinstance(order, dict):
        raise ValueError("an order is a JSON object")
    return 200, {**order, "currency": os.environ.get("DEFAULT_CURRENCY", "EUR")}


class Handler(ServiceHandler):
    get_routes = {"/": describe}
    post_routes = {"/enrich": enrich}


if __name__ == "__main__":
    serve(Handler)
