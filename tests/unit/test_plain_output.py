"""Where no terminal reads (a pipe, a file, a CI log) the CLI writes plain text without
importing rich: the same characters rich wrote for a progress line, a result table whose
cells are whole, and `--json` byte for byte as before. A terminal keeps rich."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from shared.cli.lazy_console import is_terminal, lazy_console
from shared.cli.progress import (
    _line_printer,
    error_lines,
    plain_table,
    print_result,
    result_table,
)
from shared.messages import Phase, RunResult, RunStatus, ServiceError, ServiceResult

REPO = Path(__file__).resolve().parents[2]
LINES = [
    "run r-1: 4 services, state in /tmp/x",
    "waiting for archdeploy up (pid 12) to finish…",
    "error: a handler gave up: [argv] is not a list",
    "bell\x07 back\x08space carriage\rreturn form\x0cfeed",
    "dashboard: http://127.0.0.1:8080/runs/r-1?token=abc",  # two colons: rich's path
    "rocket :rocket: here",
    "a\ttab",
    "é 漢字 " + "x" * 200,
]


@pytest.fixture(autouse=True)
def no_forced_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)


def _result(**extra: object) -> RunResult:
    long_url = "https://a-service-with-a-long-name-0123456789abcdef-ew.a.run.app"
    services = {
        "ingest": ServiceResult(
            service="ingest",
            dataflow="orders",
            status="deployed",
            build_seconds=1.25,
            deploy_seconds=2.0,
            image="europe-docker.pkg.dev/p/r/ingest@sha256:" + "ab" * 32,
            url=long_url,
        ),
        "notify": ServiceResult(service="notify", dataflow="orders", status="failed"),
    }
    return RunResult(
        run_id="r-1",
        status=RunStatus.FAILED,
        phase=Phase.DEPLOY,
        created_at=datetime(2026, 11, 30, tzinfo=UTC),
        services=services,
        **extra,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("line", LINES)
def test_a_said_line_is_written_as_rich_wrote_it(line: str) -> None:
    plain, rich = io.StringIO(), io.StringIO()
    options = {"highlight": False, "markup": False, "soft_wrap": True}

    lazy_console(file=plain, highlight=False).print(line, **options)
    Console(file=rich, highlight=False).print(line, **options)

    assert plain.getvalue() == rich.getvalue()


def test_a_pipe_gets_said_lines_without_importing_rich() -> None:
    code = (
        "import sys\n"
        "from shared.cli.lazy_console import lazy_console\n"
        "lazy_console(stderr=True, highlight=False).print("
        "'run r-1: 4 services', highlight=False, markup=False, soft_wrap=True)\n"
        "print('rich' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TTY_COMPATIBLE", "FORCE_COLOR")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env
    )

    assert done.stdout.strip() == "False" and done.stderr == "run r-1: 4 services\n"


@pytest.mark.parametrize(
    ("env", "tty"),
    [
        ({}, False),
        ({}, True),
        ({"TTY_COMPATIBLE": "1"}, False),
        ({"TTY_COMPATIBLE": "0"}, True),
        ({"FORCE_COLOR": ""}, True),
        ({"FORCE_COLOR": "1"}, False),
    ],
)
def test_a_terminal_is_what_rich_calls_one(
    env: dict[str, str], tty: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    primary, secondary = os.openpty()
    stream = open(secondary, "w") if tty else io.StringIO()  # noqa: SIM115
    try:
        assert is_terminal(stream) == Console(file=stream).is_terminal
    finally:
        stream.close()
        os.close(primary)


def test_progress_lines_are_rich_s_characters_and_are_never_wrapped() -> None:
    result = _result()
    plain = io.StringIO()
    rich = Console(file=io.StringIO(), highlight=False, width=400)

    _line_printer(plain)(result)
    for svc in result.services.values():
        detail = svc.error or svc.url or ""
        rich.print(f"  {svc.service:<24} {svc.status:<12} {detail}", highlight=False)

    assert plain.getvalue() == rich.file.getvalue()  # type: ignore[attr-defined]
    assert max(len(line) for line in plain.getvalue().splitlines()) > 80


def test_the_plain_table_has_every_cell_whole_and_a_dash_for_an_empty_one() -> None:
    text = plain_table(_result(duration_seconds=3.04))

    title, header, ingest, notify = text.splitlines()
    assert title == "run r-1: failed (deploy) in 3.0s"
    assert header.split() == ["service", "dataflow", "status", "build", "deploy", "image", "url"]
    assert ingest.split() == [
        "ingest",
        "orders",
        "deployed",
        "1.2s",
        "2.0s",
        "ingest@sha256:abababababab",
        "https://a-service-with-a-long-name-0123456789abcdef-ew.a.run.app",
    ]
    assert notify.split() == ["notify", "orders", "failed", "-", "-", "-", "-"]
    assert header.index("url") == ingest.index("https://")  # aligned columns


def test_the_plain_table_shows_the_release_column_when_a_service_was_staged() -> None:
    result = _result()
    staged = result.services["ingest"].model_copy(
        update={"staged_revision": "ingest-00002", "promoted_percent": 100}
    )
    result = result.model_copy(update={"services": {**result.services, "ingest": staged}})

    header, ingest = plain_table(result).splitlines()[1:3]

    assert header.split()[-1] == "release" and ingest.endswith("ingest-00002 100%")
    console = Console(file=io.StringIO(), width=300)
    console.print(result_table(result))  # the terminal's table has it too
    assert "ingest-00002 100%" in console.file.getvalue()  # type: ignore[attr-defined]


def test_print_result_keeps_the_json_byte_for_byte_and_says_errors_plainly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    errors = [ServiceError(service="notify", phase=Phase.DEPLOY, error="exit 1: [argv]")]
    result = _result(errors=errors, error="1 service failed")

    print_result(result, as_json=True, err=lazy_console(stderr=True))
    out, err = capsys.readouterr()

    assert out == result.model_dump_json(indent=2) + "\n"
    assert json.loads(out)["run_id"] == "r-1"
    assert err.splitlines() == error_lines(result)
    assert err.splitlines() == ["error: 1 service failed", "notify (deploy): exit 1: [argv]"]

    print_result(result, as_json=False, err=lazy_console(stderr=True))

    assert capsys.readouterr().out == plain_table(result) + "\n"
