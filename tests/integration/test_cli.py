"""The CLI's answers to bad input: one clear message naming the place, exit code 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from shared.cli.main import cli

VALID = """\
project_id: acme-dev
region: europe-west1
dataflows:
  orders:
    services:
      ingest:
        name: ingest
        deployment:
          source_path: services/ingest
"""


def _write(tmp_path: Path, text: str, name: str = "services.yaml") -> Path:
    (tmp_path / "services" / "ingest").mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(text)
    return path


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


BAD_INPUTS = {
    "malformed-yaml": ("project_id: acme-dev\ndataflows: {orders: [\n", "line"),
    "missing-project": (VALID.replace("project_id: acme-dev\n", ""), "project_id"),
    "bad-service-name": (VALID.replace("name: ingest", "name: Ingest_Service"), "Ingest_Service"),
    "duplicate-name": (
        VALID + "  billing:\n    services:\n      ingest:\n        name: ingest\n"
        "        deployment: {source_path: services/ingest}\n",
        "ingest",
    ),
    "cycle": (
        VALID.replace("        deployment:", "        dependencies: [ingest]\n        deployment:"),
        "ingest -> ingest",
    ),
    "path-escape": (VALID.replace("services/ingest", "../../etc"), "source_path"),
    "reserved-env": (
        VALID + "          environment_vars: {PORT: '9000'}\n",
        "PORT",
    ),
}


@pytest.mark.parametrize("text,needle", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_exits_2_with_a_message_naming_the_problem(
    tmp_path: Path, text: str, needle: str
) -> None:
    path = _write(tmp_path, text)
    for command in ("validate", "up"):
        code, out, err = _invoke("--state-dir", str(tmp_path / "state"), command, str(path))
        assert code == 2, (command, out, err)
        assert needle in err
        assert str(path) in err
        assert "Traceback" not in err + out
    assert not (tmp_path / "state" / "images").exists()  # nothing was built


def test_an_unknown_key_is_a_warning_with_a_suggestion_and_an_error_under_strict(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path, VALID.replace("deployment:", "deploymnet:"))
    code, _, err = _invoke("validate", str(path))
    assert code == 0
    assert "did you mean `deployment`" in err
    code, _, err = _invoke("validate", "--strict", str(path))
    assert code == 2
    assert "deploymnet" in err


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = _invoke("validate", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "nope.yaml" in err


def test_an_unknown_dataflow_is_a_usage_error(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID)
    code, _, err = _invoke("--state-dir", str(tmp_path / "s"), "up", str(path), "-d", "ordres")
    assert code == 2
    assert "did you mean `orders`" in err


def test_plan_shows_tasks_by_phase_and_the_enriched_env(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID)
    code, out, _ = _invoke("plan", str(path))
    assert code == 0
    assert "build:\n  ingest" in out
    assert "PROJECT_ID=acme-dev" in out
    code, out, _ = _invoke("plan", "--json", str(path))
    tasks = json.loads(out)
    assert [t["phase"] for t in tasks] == ["build", "deploy"]


def test_plan_shows_the_director_url_given_on_the_command_line(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID)
    code, out, _ = _invoke("plan", "--director-url", "https://director.example", str(path))
    assert code == 0
    assert "      SERVICE_DIRECTOR_URL=https://director.example" in out.splitlines()


def test_plan_shows_dependency_urls_and_why_one_is_left_out(tmp_path: Path) -> None:
    two = (
        VALID
        + """\
  reports:
    services:
      fraud-check:
        name: fraud-check
        dependencies: [ingest]
        deployment:
          source_path: services/ingest
"""
    )
    path = _write(tmp_path, two)
    code, out, _ = _invoke("plan", str(path))
    assert code == 0
    assert "      INGEST_URL=(ingest's URL, once deployed)" in out.splitlines()
    code, out, _ = _invoke("plan", "-d", "reports", str(path))
    assert code == 0 and "INGEST_URL=" not in out
    assert "(INGEST_URL left out: ingest is not deployed in this run" in out


def test_schema_prints_a_json_schema() -> None:
    code, out, _ = _invoke("schema")
    assert code == 0
    schema = json.loads(out)
    assert "project_id" in schema["required"]


def test_the_installed_command_never_prints_a_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, "project_id: [unclosed\n")
    proc = subprocess.run(
        [sys.executable, "-m", "shared.cli.main", "validate", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert re.search(r"services\.yaml:\d+: ", proc.stderr), proc.stderr


def test_status_of_an_unknown_run_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = _invoke("--state-dir", str(tmp_path), "status", "r-nope")
    assert code == 2
    assert "r-nope" in err


def test_a_reader_that_leaves_early_gets_no_error_message() -> None:
    # Given `archdeploy schema | head -c 1`: the reader closes the pipe before the writes
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.cli.main", "schema"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    process.stdout.close()
    # Then archdeploy ends quietly, with the exit code a shell gives SIGPIPE
    _, stderr = process.communicate(timeout=60)
    assert (process.returncode, stderr) == (141, b"")
