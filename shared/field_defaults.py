"""Default factories for pydantic fields, written as Python functions.

pydantic inspects every `default_factory`'s signature when it builds a model, and
`inspect.signature(list)` parses list's text signature with `tokenize` (~2 ms the first
time, ~0.12 ms each after: docs/performance.md, "Issue 19: start-up, third look")."""

from __future__ import annotations

from typing import Any


def empty_list() -> list[Any]:
    """`default_factory=list`."""
    return []
