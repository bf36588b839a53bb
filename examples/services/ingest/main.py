"""ingest: the entry of the `orders` dataflow. POST /orders takes a JSON order in.

`registration.py` is copied in at build time (config_templates in architecture.yaml).
"""

from __future__ import annotations

from typing import Any

from registration import ServiceHandler, serve


def describe(handler: ServiceHandler) -> tuple[int, dict[str, Any]]:
    return 200, {"service": handler.registration.name, "role": "takes orders in"}


def accept_order(handler: ServiceHandler) -> tuple[int, dict[str, Any]]:
    order = handler.read_json()
    if not isinstance(order, dict) or "id" not in order:
        raise ValueError("an order is a JSON object with an `id`")
    return 202, {"accepted": order["id"]}


class Handler(ServiceHandler):
    get_routes = {"/": describe}
    post_routes = {"/orders": accept_order}


if __name__ == "__main__":
    serve(Handler)
