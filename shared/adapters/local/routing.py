"""The local front end's routing table, read once per reload so a request does no parsing.

`routes.json` is `{"routes": {"<port>": {"key", "service", "tag", "backends": [{"revision",
"upstream", "percent"}]}}}`: a service's stable port lists the revisions serving it by
percent, a tag's port (`tag` set) the one revision it names at 100. A route of the older
shape (`"revision", "upstream"`) is read as one backend at 100 %.

A port's requests go to its backends by a deterministic smooth weighted round-robin (as
nginx's): over every 100 / gcd(percents) requests each revision gets exactly its share,
interleaved, so a 90/10 split sends the 10 % one request in ten, never ten in a row.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Backend:
    revision: str
    upstream: str
    percent: int


@dataclass
class Route:
    """One port's service and revisions; `pick` returns the next request's backend."""

    key: str
    service: str
    tag: str
    backends: tuple[Backend, ...]
    _schedule: tuple[Backend, ...] = field(default=(), repr=False)
    _next: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self._schedule = schedule(self.backends)

    def pick(self) -> Backend | None:
        if not self._schedule:
            return None
        backend = self._schedule[self._next]
        self._next = (self._next + 1) % len(self._schedule)
        return backend


def schedule(backends: tuple[Backend, ...]) -> tuple[Backend, ...]:
    """One cycle of smooth weighted round-robin over the backends with a percent > 0."""
    serving = [b for b in backends if b.percent > 0]
    if not serving:
        return ()
    divisor = math.gcd(*(b.percent for b in serving))
    weights = [b.percent // divisor for b in serving]
    current = [0] * len(serving)
    order: list[Backend] = []
    for _ in range(sum(weights)):
        current = [c + w for c, w in zip(current, weights, strict=True)]
        best = max(range(len(serving)), key=lambda i: current[i])
        current[best] -= sum(weights)
        order.append(serving[best])
    return tuple(order)


def parse_routes(document: dict[str, Any]) -> dict[int, Route]:
    """The routes of a `routes.json` document, by port."""
    routes: dict[int, Route] = {}
    for port, entry in document.get("routes", {}).items():
        raw = entry.get("backends")
        if raw is None:  # the shape before traffic splits: one revision
            raw = [{**entry, "percent": 100}] if entry.get("upstream") else []
        backends = tuple(
            Backend(str(b.get("revision", "?")), str(b["upstream"]), int(b.get("percent", 0)))
            for b in raw
            if b.get("upstream")
        )
        routes[int(port)] = Route(
            key=str(entry.get("key", "")),
            service=str(entry.get("service", f"port {port}")),
            tag=str(entry.get("tag", "")),
            backends=backends,
        )
    return routes


def read_routes(folder: Path) -> dict[int, Route]:
    try:
        document = json.loads((folder / "routes.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return parse_routes(document)
