"""Messages say what they mean: names as written, tabs called tabs, no director promised
where there is none."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from shared.architecture.loading import parse_architecture
from shared.architecture.yaml_source import render_path
from shared.cli.main import cli
from shared.errors import ArchitectureError


def test_unicode_names_print_as_written_and_invisible_ones_escaped() -> None:
    assert render_path(("dataflows", "main", "services", "café")) == (
        'dataflows.main.services["café"]'
    )
    assert render_path(("services", "a\u202eb")) == 'services["a\\u202eb"]'


def test_a_tab_used_for_indentation_is_called_a_tab() -> None:
    with pytest.raises(ArchitectureError) as raised:
        parse_architecture("project_id: acme-dev\ndataflows:\n\tmain: {}\n")
    message = str(raised.value)
    assert "tabs are not allowed for indentation in YAML (line 3)" in message
    assert "indent with spaces" in message


def test_plan_promises_no_director_url_without_a_director(tmp_path: Path) -> None:
    (tmp_path / "web").mkdir()
    file = tmp_path / "services.yaml"
    file.write_text(
        "project_id: acme-dev\ndataflows:\n  main:\n    services:\n"
        "      web: {deployment: {source_path: web}}\n"
    )
    done = CliRunner().invoke(cli, ["plan", str(file)])
    assert done.exit_code == 0, done.output
    assert 'SERVICE_DIRECTOR_URL="" (no director in the file)' in done.output
    assert "director's URL" not in done.output
