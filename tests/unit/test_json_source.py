"""The JSON fast path: it answers only for text YAML reads the same, gives the same
architecture as the YAML reader, and leaves every problem to the YAML reader to place."""

from __future__ import annotations

import json

import pytest
import yaml

from shared.architecture import loading
from shared.architecture.json_source import read_json
from shared.architecture.loading import load_architecture, parse_architecture
from shared.architecture.yaml_source import read_document
from tests.unit.test_validation import EXAMPLE


def _example() -> dict[str, object]:
    return yaml.safe_load(EXAMPLE.read_text())  # type: ignore[no-any-return]


def test_a_plain_json_document_is_read_without_yaml_and_gives_the_same_architecture(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = json.dumps(_example(), indent=2)
    fast = read_json(text)
    slow = read_document(text, file="x")
    assert fast is not None and not fast.located
    assert fast.data == slow.data and fast.raw.keys() <= slow.raw.keys()
    assert set(fast.lines) == set(slow.lines)  # every path (checks ask which were written)
    expected = load_architecture(EXAMPLE).architecture

    def no_yaml(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("read as YAML")

    monkeypatch.setattr(loading, "read_document", no_yaml)
    assert parse_architecture(text).architecture == expected


def test_scalars_in_text_fields_keep_their_written_form() -> None:
    document = {"project_id": "acme-dev", "labels": {"on": True, "n": 7, "off": False}}
    fast, slow = read_json(json.dumps(document)), read_document(json.dumps(document), file="x")
    assert fast is not None
    for path in (("labels", "on"), ("labels", "n"), ("labels", "off")):
        assert fast.raw[path] == slow.raw[path]
    labels = parse_architecture(json.dumps(document)).architecture.labels
    assert labels == {"on": "true", "n": "7", "off": "false"}


@pytest.mark.parametrize(
    "text",
    [
        '{"project_id": "a", "x": 1e5}',  # YAML 1.1 reads 1e5 as text
        '{"project_id": "a", "x": 1.5}',
        '{"project_id": "a", "x": NaN}',
        '{"project_id": "a", "x": -0}',
        '{"project_id": "a", "project_id": "b"}',  # the YAML reader reports duplicates
        '{"project_id": "a", "<<": {}}',
        '{\n\t"project_id": "a"\n}',  # tabs: YAML refuses them
        '{"project_id": "\\ud800"}',  # a lone surrogate
        '["project_id"]',
        "project_id: a",
        "[" * 70 + "]" * 70,
        '{"a": ' * 70 + "1" + "}" * 70,
    ],
)
def test_text_that_yaml_might_read_otherwise_is_left_to_the_yaml_reader(text: str) -> None:
    assert read_json(text) is None


def test_a_json_document_with_a_problem_is_read_again_to_place_it() -> None:
    document = _example()
    document["colour"] = "blue"  # an unknown key: a warning, with its line
    loaded = parse_architecture(json.dumps(document, indent=2))
    (warning,) = loaded.warnings
    assert warning.path == "colour" and warning.line is not None and warning.line > 1
