"""Whatever it is fed, parsing returns a LoadedArchitecture or raises an ArchitectureError."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.architecture.loading import LoadedArchitecture, parse_architecture
from shared.errors import ArchitectureError

EXAMPLE = (
    Path(__file__).parent.parent / "data" / "architectures" / "schema_example.yaml"
).read_text()
EXAMPLE_DATA = yaml.safe_load(EXAMPLE)

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

YAML_PIECES = st.sampled_from(
    [
        "project_id: acme-dev\n", "dataflows:\n", "  orders:\n", "    services:\n", "- ", ": ",
        "{", "}", "[", "]", ",", "&a ", "*a", "<<: ", "!!str ", "!tag ", "? ", "|\n", ">\n",
        "'", '"', "#", "\n", "  ", "\t", "---\n", "...\n", "~", "null", "yes", "1e3", "0x1f",
        "2024-01-31", "%YAML 1.1\n", "\\u0000", "deployment:", "cpu: ", "PORT: 1\n", "é", "\x00",
    ]
)  # fmt: skip
YAML_ISH = st.lists(YAML_PIECES | st.text(max_size=8), max_size=40).map("".join)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["../..", "/etc", "PORT", "", "a" * 60, "projects/p/secrets/s", "1Gi"])
)
JSON_LIKE = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=10) | st.sampled_from(list(EXAMPLE_DATA)), children, max_size=4
        )
    ),
    max_leaves=25,
)


def _outcome(source: str | bytes) -> LoadedArchitecture | ArchitectureError:
    try:
        result = parse_architecture(source)
    except ArchitectureError as error:
        assert error.problems
        for problem in error.problems:
            assert "internal error" not in problem.message, str(error)
            assert problem.file == "<inline>"
            assert problem.line is None or problem.line >= 1
        return error
    assert isinstance(result, LoadedArchitecture)
    return result


@PROPERTY
@given(YAML_ISH)
def test_arbitrary_yaml_ish_text_gives_an_architecture_or_an_architecture_error(text: str) -> None:
    _outcome(text)
    _outcome("project_id: acme-dev\n" + text)


@PROPERTY
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_an_architecture_or_an_architecture_error(data: bytes) -> None:
    _outcome(data)


@PROPERTY
@given(JSON_LIKE)
def test_arbitrary_json_values_give_an_architecture_or_an_architecture_error(value: Any) -> None:
    _outcome(json.dumps(value))
    if isinstance(value, dict):
        _outcome(json.dumps({"project_id": "acme-dev", **value}))


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*path, index))
    return found


EXAMPLE_PATHS = _paths(EXAMPLE_DATA)
MUTATIONS = st.sampled_from(["delete", "replace", "inject", "rename"])


def _mutate(document: Any, path: tuple[Any, ...], how: str, draw: Any) -> None:
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    key = path[-1]
    if how == "delete":
        del parent[key]
    elif how == "replace":
        parent[key] = draw(JSON_LIKE)
    elif how == "inject":
        parent[key] = draw(st.text(max_size=30) | SCALARS)
    elif isinstance(parent, dict):
        new_key = draw(st.text(max_size=12) | st.sampled_from([str(key)[:-1], str(key) + "s"]))
        parent[new_key] = parent.pop(key)


@PROPERTY
@given(st.data())
def test_mutations_of_the_example_give_an_architecture_or_an_architecture_error(
    data: st.DataObject,
) -> None:
    document = copy.deepcopy(EXAMPLE_DATA)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        live = [path for path in EXAMPLE_PATHS if _exists(document, path)]
        if not live:
            break
        _mutate(document, data.draw(st.sampled_from(live)), data.draw(MUTATIONS), data.draw)

    as_yaml = yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
    _outcome(as_yaml)
    _outcome(json.dumps(document, indent=2))


def _exists(document: Any, path: tuple[Any, ...]) -> bool:
    node = document
    for part in path:
        if not isinstance(node, dict | list):
            return False
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    return True


def test_the_unmutated_example_loads_so_the_mutations_start_from_a_valid_file() -> None:
    assert isinstance(_outcome(yaml.safe_dump(EXAMPLE_DATA, sort_keys=False)), LoadedArchitecture)
