"""A fast path for architectures that arrive as JSON text (as `DeployRequest.architecture`
does from the CLI and the benchmarks): `json.loads` in C instead of two passes of libyaml
and a Python walk of every node, which took a third of a 1,000-service dispatch.

It only answers for text that YAML would read to the same values: no floats (YAML 1.1
reads `1e5` as text), no duplicate or merge (`<<`) keys, no tabs, no surrogates, within
`MAX_DEPTH` and `MAX_NODES`; otherwise None, and the caller reads the text as YAML, which
reports whatever is wrong. Its `lines` hold every path but no line numbers (all 0): a
caller that finds a problem must read the text again with `read_document` to locate it.
"""

from __future__ import annotations

import re
from typing import Any

from shared.architecture.yaml_source import MAX_DEPTH, MAX_NODES, Document, FieldPath

# Compiled (and cached) by `re` at its first use: only a JSON document with non-ASCII text.
_SURROGATE = "[\ud800-\udfff]"


class _NotPlain(ValueError):
    """The text holds something YAML might read differently."""


def read_json(text: str) -> Document | None:
    """The document, when `text` is a JSON object that YAML reads the same; else None."""
    if not text.lstrip().startswith("{") or "\t" in text:
        return None
    import json  # only for a JSON object: a YAML file never needs the module

    try:
        data = json.loads(
            text,
            object_pairs_hook=_unique,
            parse_float=_refuse,
            parse_constant=_refuse,
            parse_int=_canonical_int,
        )
    except (ValueError, RecursionError):
        return None
    walk = _Walk()
    try:
        walk.value(data, (), 1)
    except _NotPlain:
        return None
    return Document(data, walk.lines, walk.raw, [], located=False)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs) or "<<" in result:
        raise _NotPlain("duplicate or merge key")
    return result


def _refuse(text: str) -> Any:
    raise _NotPlain(text)


def _canonical_int(text: str) -> int:
    number = int(text)
    if str(number) != text:  # `-0`: YAML keeps the text, which a string field would show
        raise _NotPlain(text)
    return number


class _Walk:
    def __init__(self) -> None:
        self.lines: dict[FieldPath, int] = {}
        self.raw: dict[FieldPath, str] = {}
        self.count = 0

    def value(self, value: Any, path: FieldPath, depth: int) -> None:
        self.count += 1
        if depth > MAX_DEPTH or self.count > MAX_NODES:
            raise _NotPlain("too deep or too big")
        self.lines[path] = 0
        if isinstance(value, dict):
            for key, item in value.items():
                self.value(item, (*path, key), depth + 1)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.value(item, (*path, index), depth + 1)
        elif isinstance(value, str):
            if not value.isascii() and re.search(_SURROGATE, value):
                raise _NotPlain("surrogate")
            self.raw[path] = value
        elif isinstance(value, bool):
            self.raw[path] = "true" if value else "false"
        elif value is None:
            self.raw[path] = "null"
        else:
            self.raw[path] = str(value)
