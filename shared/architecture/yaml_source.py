"""Reading YAML (and JSON, which is YAML) into plain data that remembers where each value was.

`decode` checks size and encoding. `read_document` turns text into dicts, lists and
scalars plus two maps keyed by field path: the 1-based line each value was written on, and
the raw text of each scalar. Paths are tuples of mapping keys (str) and list indexes (int);
`render_path` spells them `dataflows.orders.services.a.deployment.secret_environment_vars[0]`.

Parsing is two passes over libyaml (when present): first the event stream alone, which is
iterative, to refuse documents nested too deep (libyaml's composer recurses in C and
crashes the interpreter on a few hundred thousand levels) or too big once aliases are
expanded (the "billion laughs"); then composition and our own construction, which needs
the node marks for lines. Nothing here runs arbitrary constructors: the loader is a
SafeLoader subclass and only scalars go through its constructors.

`shared.architecture.conform` then bends the data towards the pydantic model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from shared.errors import ArchitectureError, Problem

if yaml.__with_libyaml__:
    from yaml import CSafeLoader as _SafeLoader
else:  # pragma: no cover - the pure-Python parser, same behaviour, slower
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

FieldPath = tuple[str | int, ...]

# An architecture is about ten levels deep (root, dataflows, flow, services, service,
# deployment, secret_environment_vars, item, name); free-form metadata gets the rest.
MAX_DEPTH = 64
# Values after alias expansion. A 500-service architecture with resources is about 30,000;
# beyond this a document is a bomb or a mistake, and refusing it keeps parsing under a second.
MAX_NODES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"
_UTF8_FIX = "save the file as UTF-8"
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# An escaped surrogate pair, preceded by an even number of backslashes (so not itself escaped).
_SURROGATE_PAIR = re.compile(
    r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.I
)


class _Loader(_SafeLoader):
    """A SafeLoader that keeps timestamps as written: no field of ours is a date."""


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_str)  # type: ignore[type-var]


@dataclass
class Document:
    data: Any
    lines: dict[FieldPath, int]
    raw: dict[FieldPath, str]
    problems: list[Problem]  # found while reading (duplicate keys); reported with the rest
    located: bool = True  # False: `lines` has every path but no line numbers (json_source)


def render_path(path: FieldPath) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            text += f".{part}" if text else part
        else:
            import json  # a key that needs quoting: an error message's path

            # Names print as written; what would not show (controls, bidi) stays escaped.
            quoted = json.dumps(part, ensure_ascii=False)
            shown = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in quoted)
            text += f"[{shown}]"
    return text


def line_of(lines: Mapping[FieldPath, int], path: FieldPath) -> int | None:
    """The line of `path`, or of its nearest parent that was written in the file."""
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def decode(source: str | bytes, *, file: str, max_bytes: int) -> str:
    """The document as text, without a byte order mark.

    Raises:
        ArchitectureError: it is larger than `max_bytes` in UTF-8, or is not UTF-8.
    """
    data = _encode(source, file) if isinstance(source, str) else source
    if len(data) > max_bytes:
        message = f"the file is larger than {max_bytes} bytes ({max_bytes / 2**20:g} MiB)"
        fix = "architecture files are a few kilobytes: check that this is the right file"
        raise _error(file, "", message, None, fix)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        message = (
            f"the file is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}"
            f" (line {line}) cannot be decoded"
        )
        raise _error(file, "", message, line, _UTF8_FIX) from None
    return text.removeprefix("\ufeff")


def _encode(text: str, file: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        message = f"the text holds an invalid character (a lone surrogate) at line {line}"
        raise _error(file, "", message, line, _UTF8_FIX) from None


def read_document(text: str, *, file: str) -> Document:
    """Parse one YAML or JSON document.

    Raises:
        ArchitectureError: the text is not YAML, is empty, holds several documents, or is
            nested or expands beyond MAX_DEPTH / MAX_NODES.
    """
    text = _join_json_surrogates(text)
    try:
        _check_shape(text, file)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise _error(
                    file, "", "the file is empty", 1, "start with `project_id: my-project`"
                )
            builder = _Builder(loader, file)
            data = builder.build(node, ())
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ArchitectureError([_yaml_problem(exc, text, file)]) from None
    return Document(data, builder.lines, builder.raw, builder.problems)


def _join_json_surrogates(text: str) -> str:
    """JSON escapes characters beyond U+FFFF as surrogate pairs (`json.dumps` does by default),
    which libyaml refuses; in a JSON document, write each pair as the character it encodes."""
    if not _SURROGATE_PAIR.search(text):
        return text
    import json

    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return text  # YAML, where a backslash outside double quotes is just a backslash
    return _SURROGATE_PAIR.sub(_joined, text)


def _joined(match: re.Match[str]) -> str:
    high, low = int(match[2], 16), int(match[3], 16)
    return match[1] + chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))


def _error(file: str, path: str, message: str, line: int | None, fix: str) -> ArchitectureError:
    return ArchitectureError([Problem(path, message, line, fix, file)])


def _yaml_problem(exc: yaml.YAMLError, text: str, file: str) -> Problem:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = ", ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        fix = (
            "remove the `!tag`: only plain YAML values are read"
            if isinstance(exc, yaml.constructor.ConstructorError)
            else "check the indentation, quotes and brackets on that line and the one before"
        )
        message = f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {what}"
        if "cannot start any token" in what and text[mark.index : mark.index + 1] == "\t":
            message = f"tabs are not allowed for indentation in YAML (line {mark.line + 1})"
            fix = "indent with spaces"
        return Problem("", message, mark.line + 1, fix, file)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        return Problem(
            "",
            f"character #x{exc.character:04x} at line {line} is not allowed in YAML: {exc.reason}",
            line,
            "remove it, or write it escaped inside a double-quoted string",
            file,
        )
    return Problem("", f"invalid YAML: {exc}", None, "check the file's syntax", file)


def _check_shape(text: str, file: str) -> None:
    """Refuse deep nesting and alias bombs from the event stream, before building anything."""
    loader = _Loader(text)
    try:
        _walk_events(loader, file)
    except yaml.MarkedYAMLError as exc:
        _recheck_before(text, exc, file)
        raise
    finally:
        loader.dispose()


def _recheck_before(text: str, exc: yaml.MarkedYAMLError, file: str) -> None:
    """libyaml scans far ahead of the events it hands out, and newer releases refuse deep
    flow nesting themselves, in their own words, before our walk reaches MAX_DEPTH. So
    when it fails, walk the text up to its error with the pure-Python parser (which looks
    at most 1024 characters ahead): if our limits are what the text breaks, say so in our
    words; otherwise the original error stands."""
    mark = exc.problem_mark or exc.context_mark
    if mark is None or not yaml.__with_libyaml__:
        return
    loader = yaml.SafeLoader(text[: mark.index])
    try:
        _walk_events(loader, file)  # type: ignore[arg-type]
    except yaml.YAMLError:
        return  # the prefix ends mid-document: nothing of ours was broken before it
    finally:
        loader.dispose()


@dataclass
class _Open:
    anchor: str | None
    level: int
    count_before: int
    peak: int


def _walk_events(loader: _Loader, file: str) -> None:
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> (values, depth) of its node
    stack: list[_Open] = []
    count, aliased = 0, False
    while loader.check_event():
        event = loader.get_event()
        if event is None:
            break
        line = event.start_mark.line + 1 if event.start_mark else 1
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append(_Open(event.anchor, len(stack) + 1, count, len(stack) + 1))
            count, depth = count + 1, len(stack)
        elif isinstance(event, yaml.CollectionEndEvent):
            done = stack.pop()
            if done.anchor is not None:
                sizes[done.anchor] = (count - done.count_before, done.peak - done.level + 1)
            if stack:
                stack[-1].peak = max(stack[-1].peak, done.peak)
            continue
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                sizes[event.anchor] = (1, 1)
            count, depth = count + 1, len(stack) + 1
        elif isinstance(event, yaml.AliasEvent):
            if any(frame.anchor == event.anchor for frame in stack):
                raise _error(
                    file,
                    "",
                    f"alias `*{event.anchor}` refers to a value that contains it",
                    line,
                    "a YAML alias cannot include itself: write the value out",
                )
            values, inner = sizes.get(event.anchor or "", (1, 1))
            count, depth, aliased = count + values, len(stack) + inner, True
        else:
            continue
        if stack:
            stack[-1].peak = max(stack[-1].peak, depth)
        _check_limits(count, depth, line, file, aliased)


def _check_limits(count: int, depth: int, line: int, file: str, aliased: bool) -> None:
    if depth > MAX_DEPTH:
        raise _error(
            file,
            "",
            f"values are nested more than {MAX_DEPTH} levels deep (line {line})",
            line,
            "an architecture is about ten levels deep: flatten this structure",
        )
    if count > MAX_NODES:
        raise _error(
            file,
            "",
            f"the document holds more than {MAX_NODES} values"
            + (" once its aliases are expanded: a YAML alias bomb?" if aliased else "")
            + f" (reached at line {line})",
            line,
            "use fewer nested aliases (`*name`)" if aliased else "split the architecture",
        )


class _Builder:
    """Builds plain data from composed nodes, expanding aliases (already bounded)."""

    def __init__(self, loader: _Loader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.lines: dict[FieldPath, int] = {}
        self.raw: dict[FieldPath, str] = {}
        self.problems: list[Problem] = []
        self._checked: set[int] = set()

    def build(self, node: yaml.Node, path: FieldPath) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            self.raw[path] = node.value
            return self.loader.construct_object(node)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, (*path, index)) for index, child in enumerate(node.value)]
        assert isinstance(node, yaml.MappingNode)
        return self._mapping(node, path)

    def _mapping(self, node: yaml.MappingNode, path: FieldPath) -> dict[str, Any]:
        if id(node) not in self._checked:
            self._checked.add(id(node))
            self._find_duplicates(node, path)
        self.loader.flatten_mapping(node)  # resolves `<<: *base` merge keys
        last: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                self.problems.append(
                    Problem(
                        render_path(path),
                        f"a key at line {line} is a list or mapping",
                        line,
                        "keys must be plain text",
                        self.file,
                    )
                )
                continue
            last.pop(key_node.value, None)  # a later key wins, and keeps its position
            last[key_node.value] = (key_node, value_node)
        result: dict[str, Any] = {}
        for key, (key_node, value_node) in last.items():
            self.lines[(*path, key)] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, (*path, key))
        return result

    def _find_duplicates(self, node: yaml.MappingNode, path: FieldPath) -> None:
        first: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key not in first:
                first[key] = line
                continue
            self.problems.append(
                Problem(
                    render_path((*path, key)),
                    f"duplicate key `{key}`: first at line {first[key]}, again at line {line}",
                    line,
                    "remove one of them: YAML would silently keep only the last",
                    self.file,
                )
            )
