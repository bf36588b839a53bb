"""Reading and checking architecture files, with errors a person can act on.

`parse_architecture` (text) and `load_architecture` (a path) return a `LoadedArchitecture`
or raise one `ArchitectureError` listing every problem found, each with the file, the
dotted field path, the line, and a fix. Unknown keys are warnings (errors with
`strict=True`), with a did-you-mean. Reading YAML lives in `shared.architecture.yaml_source`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared.architecture.checks import (
    PROJECT_ID_FIX,
    Report,
    check_architecture,
    close_matches,
)
from shared.architecture.conform import conform
from shared.architecture.json_source import read_json
from shared.architecture.model import Architecture
from shared.architecture.yaml_source import (
    Document,
    FieldPath,
    decode,
    read_document,
    render_path,
)
from shared.errors import ArchitectureError, Problem

logger = logging.getLogger(__name__)

# Real architecture files are a few kilobytes; a thousand services stay far below 1 MiB.
# The raw document is kept with its run, and a Firestore document holds at most 1 MiB,
# so a bigger file is a mistake (a build artefact, a log) that would fail later anyway.
MAX_ARCHITECTURE_BYTES = 1_048_576

# Fields whose absence pydantic reports, with what to write instead.
_MISSING_FIXES = {
    "project_id": PROJECT_ID_FIX,
    "name": "add `name: ...`",
    "value_from": "add `value_from: <Secret Manager secret id>`",
    "key": "add `key: ...`, the name the service looks the value up by",
}
_VALUE_FIXES = {"min_instances": "make `min_instances` at most `max_instances`"}
_READ_FIX = "check the path, and that it names a readable file"
_MAPPING_FIX = "start with `project_id: my-gcp-project`, then `dataflows:`"
_REPAIR_ROUNDS = 4


@dataclass(frozen=True)
class LoadedArchitecture:
    architecture: Architecture
    file: str  # display name: the path as given, or "<inline>"
    base_dir: Path | None  # directory relative source paths resolve against
    text: str  # the raw document (kept so a run can store it)
    warnings: list[Problem]


def load_architecture(
    path: str | Path,
    *,
    strict: bool = False,
    check_paths_exist: bool = False,
    environment: str | None = None,
) -> LoadedArchitecture:
    """Read and check the architecture file at `path`; relative paths resolve beside it.

    Raises:
        ArchitectureError: the file cannot be read or does not validate (every problem).
    """
    file = str(path)
    try:
        with Path(path).open("rb") as stream:
            data = stream.read(MAX_ARCHITECTURE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        problem = Problem("", f"cannot read the architecture file: {reason}", None, _READ_FIX, file)
        raise ArchitectureError([problem]) from None
    return parse_architecture(
        data,
        file=file,
        base_dir=Path(path).absolute().parent,
        strict=strict,
        check_paths_exist=check_paths_exist,
        environment=environment,
    )


def parse_architecture(
    text: str | bytes,
    *,
    file: str = "<inline>",
    base_dir: Path | None = None,
    strict: bool = False,
    check_paths_exist: bool = False,
    environment: str | None = None,
) -> LoadedArchitecture:
    """Read and check an architecture document (YAML or JSON).

    `base_dir` is where relative source paths resolve; without it they are only checked
    not to climb out with `..`, absolute ones are refused, and existence (with
    `check_paths_exist`) is checked against the current directory. Remote sources
    (`gs://`, `github://`) are left to the source adapters. `environment` applies
    `deployment_environments[environment]`.

    Raises:
        ArchitectureError: the document does not validate; lists every problem found.
    """
    try:
        return _parse(text, file, base_dir, strict, check_paths_exist, environment)
    except ArchitectureError:
        raise
    except Exception as exc:  # the boundary: callers only ever see ArchitectureError
        logger.error("unexpected error while checking %s", file, exc_info=True)
        problem = Problem(
            "",
            f"internal error while checking the file ({type(exc).__name__})",
            None,
            "this is a bug in archdeploy: please report it with the file",
            file,
        )
        raise ArchitectureError([problem]) from exc


def _parse(
    source: str | bytes,
    file: str,
    base_dir: Path | None,
    strict: bool,
    check_paths_exist: bool,
    environment: str | None,
) -> LoadedArchitecture:
    text = decode(source, file=file, max_bytes=MAX_ARCHITECTURE_BYTES)
    fast = read_json(text)
    if fast is not None:
        # Problems need lines: a document with any is read again, as YAML, to place them.
        with contextlib.suppress(ArchitectureError):
            loaded = _checked(fast, text, file, base_dir, strict, check_paths_exist, environment)
            if not loaded.warnings:
                return loaded
    document = read_document(text, file=file)
    return _checked(document, text, file, base_dir, strict, check_paths_exist, environment)


def _checked(
    document: Document,
    text: str,
    file: str,
    base_dir: Path | None,
    strict: bool,
    check_paths_exist: bool,
    environment: str | None,
) -> LoadedArchitecture:
    report = Report(file, document.lines, base_dir, check_paths_exist)
    report.errors.extend(document.problems)
    if not isinstance(document.data, dict):
        report.error((), "the file must be a mapping of `key: value` lines", _MAPPING_FIX)
        raise ArchitectureError(report.errors)
    shaped = conform(document.data, Architecture, document.raw)
    for key_path, known in shaped.unknown:
        _report_unknown(report, key_path, known, strict)
    architecture = _validate_model(shaped.data, shaped.entries, report)
    if architecture is not None:
        check_architecture(architecture, report, environment)
    errors = report.errors
    if errors or architecture is None:
        raise ArchitectureError(sorted(errors, key=lambda problem: problem.line or 0))
    return LoadedArchitecture(
        architecture.for_environment(environment),
        file,
        base_dir,
        text,
        sorted(report.warnings, key=lambda problem: problem.line or 0),
    )


def _report_unknown(report: Report, path: FieldPath, known: list[str], strict: bool) -> None:
    key = str(path[-1])
    close = close_matches(key, known)
    where = f" in `{render_path(path[:-1])}`" if path[:-1] else " at the top level"
    message = f"unknown key `{key}`{where}" + ("" if strict else ": it is ignored")
    fix = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(known)}"
    if strict:
        report.error(path, message, fix)
    else:
        report.warn(path, message, fix)


def _validate_model(
    data: dict[str, Any], entries: set[FieldPath], report: Report
) -> Architecture | None:
    """The Architecture, after reporting pydantic's errors and dropping what they name.

    Dropping the offending values lets the remaining checks run, so one pass reports
    everything; only the first round's errors are the user's, later rounds are ours.
    """
    for round_number in range(_REPAIR_ROUNDS):
        try:
            return Architecture.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        targets = []
        for error in errors:
            path = _error_path(data, error["loc"])
            if error["type"] == "value_error":
                path = _named_field(data, path, str(error.get("msg", "")))
            if round_number == 0:
                report.error(path, *_describe(error, path, data))
                report.settled.add(path)
            if error["type"] == "missing" and len(path) == 1:
                data[str(path[0])] = ""  # project_id: let the other checks run
            else:
                targets.append(path[:-1] if error["type"] == "missing" else path)
        if not _drop(data, targets, entries):
            return None
    return None


def _error_path(data: Any, loc: tuple[int | str, ...]) -> FieldPath:
    """pydantic's `loc` without the parts that name union members rather than keys."""
    path: list[str | int] = []
    for index, part in enumerate(loc):
        found = _has(data, part)
        if found:
            data = data[part]
        elif index < len(loc) - 1:
            continue  # a union member's name, or a key that is not there
        path.append(part)
    return tuple(path)


def _named_field(data: Any, path: FieldPath, message: str) -> FieldPath:
    """A model-level error moved to the first of the model's fields that its message names."""
    for part in path:
        data = data[part]
    names = re.findall(r"[a-z_]+", message)
    named = [key for key in data if key in names] if isinstance(data, dict) else []
    return (*path, named[0]) if named else path


def _has(data: Any, part: int | str) -> bool:
    if isinstance(data, dict):
        return part in data
    return isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)


def _drop(data: dict[str, Any], targets: list[FieldPath], entries: set[FieldPath]) -> bool:
    if any(not target for target in targets):
        return False
    for target in sorted(set(targets), key=_sort_key, reverse=True):
        parent: Any = data
        for part in target[:-1]:
            parent = parent[part]
        if target in entries:
            parent[target[-1]] = {}  # keep the named entry: others may refer to its name
        elif _has(parent, target[-1]):
            del parent[target[-1]]
    return True


def _sort_key(path: FieldPath) -> tuple[tuple[int, str | int], ...]:
    return tuple((0, part) if isinstance(part, int) else (1, part) for part in path)


# pydantic error types: (what is wrong, the fix), filled with the field's name and what was given.
_TYPE_ERRORS = {
    "string_type": ("must be text, not {given}", 'write one value, e.g. `{name}: "value"`'),
    "int_type": ("must be a whole number, not {given}", "e.g. `{name}: 1`"),
    "bool_type": ("must be true or false, not {given}", "e.g. `{name}: true`"),
    "dict_type": (
        "must be a mapping of keys to values, not {given}",
        "write `{name}:` followed by indented `key: value` lines",
    ),
    "list_type": ("must be a list, not {given}", "write `{name}: [a, b]` or `- item` lines"),
}
_SAME_AS = {
    "int_parsing": "int_type",
    "int_from_float": "int_type",
    "bool_parsing": "bool_type",
    "model_type": "dict_type",
    "model_attributes_type": "dict_type",
}


def _describe(error: Any, path: FieldPath, data: Any) -> tuple[str, str]:
    name = next((str(part) for part in reversed(path) if isinstance(part, str)), "value")
    kind = _SAME_AS.get(error["type"], error["type"])
    if kind == "missing":
        return f"`{name}` is required", _missing_fix(name, path, data)
    if kind in _TYPE_ERRORS:
        message, fix = _TYPE_ERRORS[kind]
        given = _kind(error.get("input"))
        return f"`{name}` " + message.format(given=given), fix.format(name=name)
    if kind == "literal_error":
        allowed, got = error.get("ctx", {}).get("expected", ""), error.get("input")
        shown = f" (got `{got}`)" if isinstance(got, str) and len(got) <= 40 else ""
        return f"`{name}` must be one of {allowed}{shown}", f"use one of {allowed}"
    message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
    if message.startswith("Input should"):
        return f"`{name}` s{message[len('Input s') :]}", "change the value"
    return message, _VALUE_FIXES.get(name, "correct the values")


def _missing_fix(name: str, path: FieldPath, data: Any) -> str:
    for part in path[:-1]:
        data = data[part]
    close = close_matches(name, [key for key in data if key != name])
    if close:
        return f"rename `{close[0]}` to `{name}`"
    return _MISSING_FIXES.get(name, f"add `{name}: ...`")


def _kind(value: Any) -> str:
    kinds = ((bool, "true/false"), (int | float, "a number"), (str, "text"), (dict, "a mapping"))
    for types, name in (*kinds, (list, "a list"), (type(None), "empty (null)")):
        if isinstance(value, types):
            return name
    return type(value).__name__


def architecture_json_schema() -> dict[str, Any]:
    """JSON Schema of the architecture file, for editors: unknown keys of ours are flagged."""
    schema = Architecture.model_json_schema()
    for definition in [schema, *schema.get("$defs", {}).values()]:
        if definition.get("type") == "object" and "properties" in definition:
            definition.setdefault("additionalProperties", False)
    for legacy in ("topics", "subscriptions"):
        schema["properties"][legacy]["deprecated"] = True
        schema["properties"][legacy]["description"] = "Written by older versions; ignored."
    schema.pop("title", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://archdeploy.dev/schemas/architecture.json",
        "title": "archdeploy architecture",
        "description": "A microservice architecture deployed by archdeploy: project, "
        "service director, dataflows with their services and resources.",
        **schema,
    }
