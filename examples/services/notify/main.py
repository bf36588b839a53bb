"""notify: the `notifications` dataflow. POST /notify queues a message (kept in memory).

Started through its Procfile (`web:` line, `$PORT` passed as --port) to show that path.
`registration.py` is copied in at build time (config_templates in architecture.yaml).
"""

from __future__ import annotations

import argparse
import threading
from typing import Any

from registration import ServiceHandler, serve

_sent: list[dict[str, Any]] = []
_sent_lock = threading.Lock()


def describe(handler: ServiceHandler) -> tuple[int, dict[str, Any]]:
    with _sent_lock:
        count = len(_sent)
    return 200, {"service": handler.registration.name, "role": "notifies", "sent": count}


def notify(handler: ServiceHandler) -> tuple[int, dict[str, Any]]:
    message = handler.read_json()
    if not isinstance(message, dict) or "to" not in message:
        raise ValueError("a notification is a JSON object with a `to`")
    with _sent_lock:
        _sent.append(message)
    return 202, {"queued": message["to"]}


class Handler(ServiceHandler):
    get_routes = {"/": describe}
    post_routes = {"/notify": notify}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    serve(Handler, port=parser.parse_args().port)
