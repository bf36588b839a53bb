"""How the `archdeploy` process starts and ends (shared.cli.process): a short-lived command
skips the interpreter's teardown but loses no output, no exit code and no exit handler;
every other command, and the CLI used in-process, keeps the collector and the teardown."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.cli import process

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = str(REPO / "examples" / "architecture.yaml")

# Run as the installed command runs (`main()`), with two witnesses: an exit handler, and an
# object whose finaliser only the interpreter's teardown calls (it sits in a module global).
PROBE = """
import atexit, sys
import shared.cli.main as entry

class Witness:
    def __del__(self):
        sys.stderr.write("torn down\\n")

entry.witness = Witness()
atexit.register(lambda: sys.stderr.write("exit handlers ran\\n"))
{before}
sys.argv = ["archdeploy", *{args!r}]
entry.main()
"""


def run_main(*args: str, before: str = "") -> subprocess.CompletedProcess[str]:
    code = PROBE.format(args=list(args), before=before)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_validate_ends_at_once_with_its_output_exit_code_and_exit_handlers() -> None:
    done = run_main("validate", EXAMPLE)

    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{EXAMPLE}: ok (4 services in 2 dataflows, 0 warnings)\n"
    assert "exit handlers ran" in done.stderr
    assert "torn down" not in done.stderr  # the teardown was skipped


def test_a_failed_validate_ends_at_once_with_its_message_and_exit_code(tmp_path: Path) -> None:
    bad = tmp_path / "services.yaml"
    bad.write_text("project_id: [unclosed\n")

    done = run_main("validate", str(bad))

    assert done.returncode == 2
    assert f"{bad}:" in done.stderr and "Traceback" not in done.stderr
    assert "exit handlers ran" in done.stderr and "torn down" not in done.stderr


def test_validate_with_a_thread_still_running_ends_the_ordinary_way() -> None:
    # A thread still running (a user's plugin, say) must be joined, as Python does. This
    # one runs until the main thread has finished: only an ordinary exit lets it finish.
    thread = (
        "import threading\n"
        "def after_main():\n"
        "    threading.main_thread().join()\n"
        "    sys.stderr.write('joined\\n')\n"
        "threading.Thread(target=after_main).start()"
    )

    done = run_main("validate", EXAMPLE, before=thread)

    assert done.returncode == 0, done.stderr
    assert "joined" in done.stderr and "torn down" in done.stderr


def test_other_commands_keep_the_interpreter_teardown() -> None:
    done = run_main("schema")

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("{")
    assert "exit handlers ran" in done.stderr and "torn down" in done.stderr


@pytest.fixture
def owned_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`process.start()` as `main()` calls it, undone afterwards (this is pytest's process),
    with the pydantic plugin switch and loader that a short-lived command sets."""
    monkeypatch.delenv(process.PLUGINS_SWITCH, raising=False)
    monkeypatch.delitem(sys.modules, process.PLUGIN_LOADER, raising=False)
    saved = dict(process._state)
    process.start()
    try:
        yield
    finally:
        process._state.update(saved)
        gc.enable()


@pytest.mark.usefixtures("owned_process")
@pytest.mark.parametrize("name", ["up", "status", "ui", "dev", None], ids=str)
def test_the_collector_resumes_once_a_longer_command_is_chosen(name: str | None) -> None:
    assert not gc.isenabled()  # paused for start-up

    process.command_chosen(name)

    assert gc.isenabled()


@pytest.mark.usefixtures("owned_process")
def test_the_collector_stays_paused_for_a_short_lived_command() -> None:
    process.command_chosen("validate")

    assert not gc.isenabled()


@pytest.mark.usefixtures("owned_process")
def test_a_run_starts_with_what_start_up_built_frozen() -> None:
    process.command_chosen("up")
    try:
        process.run_starts()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_run_of_the_cli_used_in_process_freezes_nothing() -> None:
    process.run_starts()

    assert gc.get_freeze_count() == 0


def test_the_cli_used_in_process_leaves_the_collector_alone() -> None:
    assert gc.isenabled()

    process.command_chosen("validate")  # what the root command does, without main()

    assert gc.isenabled()


def test_an_up_ends_at_once_once_it_has_closed_what_it_opened(tmp_path: Path) -> None:
    """`up` (ENDS_AT_ONCE) closes its bus and store itself: its process skips the teardown,
    keeps its output, exit code and exit handlers, and leaves a store the next command
    reads."""
    state = ["--state-dir", str(tmp_path / "state")]
    try:
        done = run_main(*state, "up", EXAMPLE)

        assert done.returncode == 0, done.stderr
        assert "exit handlers ran" in done.stderr and "torn down" not in done.stderr
        assert "director" in done.stdout and "deployed" in done.stdout, done.stdout
        status = run_main(*state, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert '"status": "succeeded"' in status.stdout
        assert "torn down" in status.stderr  # status keeps the ordinary teardown
    finally:
        run_main(*state, "down", EXAMPLE)
