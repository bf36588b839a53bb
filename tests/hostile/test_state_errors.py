"""A state folder that is not what it should be: one clear line naming the path and the
fix, exit 2, never a traceback; and reading commands create nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.hostile.conftest import SERVICE, architecture, run_cli

# Not writable even by root (this suite may run as root, for whom chmod changes nothing).
UNWRITABLE = Path("/sys/kernel")


def _one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    return lines[0]


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    app = architecture(tmp_path / "app", {"web": SERVICE})
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    for args in (("up", str(app)), ("down", str(app)), ("status",), ("runs",)):
        done = run_cli("--state-dir", str(blocker), *args)
        assert done.code == 2, (args, done.text)
        line = _one_error_line(done.err)
        assert str(blocker) in line and "--state-dir" in line, line


def test_state_dir_under_a_file(tmp_path: Path) -> None:
    app = architecture(tmp_path / "app", {"web": SERVICE})
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    done = run_cli("--state-dir", str(blocker / "state"), "up", str(app))
    assert done.code == 2, done.text
    assert str(blocker) in _one_error_line(done.err)


def test_unwritable_state_folder(tmp_path: Path) -> None:
    app = architecture(tmp_path / "app", {"web": SERVICE})
    for args in (("up", str(app)), ("status",)):
        done = run_cli("--state-dir", str(UNWRITABLE / "archdeploy"), *args)
        assert done.code == 2, (args, done.text)
        assert "archdeploy" in _one_error_line(done.err)
    for args in (("down", str(app)), ("runs",)):
        done = run_cli("--state-dir", str(UNWRITABLE), *args)
        assert done.code == 2, (args, done.text)
        line = _one_error_line(done.err)
        assert str(UNWRITABLE) in line and "--state-dir" in line, line


def test_status_and_runs_create_nothing(tmp_path: Path) -> None:
    for args in (("status",), ("runs",), ("status", "--json")):
        done = run_cli(*args, cwd=tmp_path)
        assert done.code == 2, done.text
        assert f"{tmp_path}/.archdeploy does not exist" in _one_error_line(done.err)
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_run_record(tmp_path: Path) -> None:
    app = architecture(tmp_path / "app", {"web": SERVICE})
    assert run_cli("up", str(app)).code == 0
    try:
        db = tmp_path / "app" / ".archdeploy" / "runs.db"
        with sqlite3.connect(db) as connection:
            connection.execute("UPDATE runs SET doc = '{\"run_id\": 5'")
        for args in (("status",), ("runs",), ("up", str(app))):
            done = run_cli("--state-dir", str(db.parent), *args)
            assert done.code == 2, (args, done.text)
            line = _one_error_line(done.err)
            assert str(db) in line and "corrupt" in line, line
    finally:
        assert run_cli("down", str(app)).code == 0


def test_down_of_nothing_says_not_running(tmp_path: Path) -> None:
    app = architecture(tmp_path / "app", {"web": SERVICE})
    done = run_cli("down", str(app))
    assert done.code == 0, done.text
    assert "web                      not running" in done.err
    assert "stopped" not in done.err
    assert not (tmp_path / "app" / ".archdeploy").exists()
