"""The project-wide build cap (`ARCHDEPLOY_PROJECT_BUILD_CAP`) treated badly: the real CLI
killed while it holds the project's build slots, two `up`s at once of different
architectures (each with its own state folder) of one project, Ctrl-C while a run waits
for a slot.

A build here blocks until the test lets it go: the service's requirements file includes a
named pipe (`-r gate`), so pip waits on it. A build is in flight exactly while its pip
process lives (seen in the process table); opening the pipe for writing lets it end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.hostile.conftest import (
    SERVICE,
    architecture,
    cli_env,
    finish,
    kill_group,
    run_cli,
    start_cli,
    stderr_has,
    wait_for,
)

PROJECT = "capped"
BUILD_WAIT = 60.0  # seconds: how long a build may take to start when a slot is free


class Gates:
    """One named pipe per gated build, under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()

    def app(self, folder: Path, *names: str) -> Path:
        """An architecture of `names` in `folder`, each build gated on its pipe."""
        path = architecture(folder, dict.fromkeys(names, SERVICE), project=PROJECT)
        for name in names:
            os.mkfifo(self.root / name)
            (folder / name / "requirements.txt").write_text(f"# {name}\n-r {self.root / name}\n")
        return path

    def building(self, name: str) -> bool:
        """Whether `name`'s build is in flight: its pip waits on its pipe."""
        return any(_reads(proc, self.root / name) for proc in psutil.process_iter())

    def open(self, name: str) -> None:
        """Let `name`'s build end (once its pip reads the pipe: a writer waits for it)."""
        path = self.root / name
        threading.Thread(target=lambda: path.open("w").close(), daemon=True).start()

    def close(self) -> None:
        """Let every build still waiting end (a test that failed half-way leaves them),
        and unblock writers still waiting for a reader that never came."""
        for pipe in self.root.iterdir():
            with contextlib.suppress(OSError):  # ENXIO: no reader
                os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))  # a reader gets EOF
            os.close(os.open(pipe, os.O_RDONLY | os.O_NONBLOCK))


def _reads(proc: psutil.Process, pipe: Path) -> bool:
    try:
        cmdline = proc.cmdline()
        if "pip" not in cmdline or "install" not in cmdline:
            return False
        requirements = Path(cmdline[cmdline.index("-r") + 1])
        return str(pipe) in requirements.read_text()
    except (psutil.Error, OSError, ValueError, IndexError):
        return False


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[Gates]:
    made = Gates(tmp_path / "gates")
    yield made
    made.close()


def _env(tmp_path: Path, cap: int = 1) -> dict[str, str]:
    # One machine-wide slot file for every state folder, here the test's own.
    return cli_env(
        ARCHDEPLOY_PROJECT_BUILD_CAP=str(cap),
        ARCHDEPLOY_BUILD_SLOTS_FILE=str(tmp_path / "build-slots.db"),
    )


def _never(what: str, check: object, seconds: float) -> None:
    """Fail if `check()` answers true at any point within `seconds`."""
    assert callable(check)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert not check(), what
        time.sleep(0.05)


def _shows_waiting(proc: subprocess.Popen[str]) -> bool:
    """Whether `up`'s progress shows its build `waiting` (held back for a slot)."""
    return stderr_has(proc, "  waiting")


def _up(app: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return start_cli("up", str(app), env=env)


def _down(app: Path) -> None:
    done = run_cli("down", str(app))
    assert done.code == 0, done.text


def test_a_killed_up_does_not_keep_the_projects_build_slots(tmp_path: Path, gates: Gates) -> None:
    """kill -9 while its build holds the project's only slot: another architecture's `up`
    (another state folder) builds at once, not after the slot's lease (the build
    deadline, an hour here): the slot's owner is a dead process."""
    env = _env(tmp_path)
    alpha = gates.app(tmp_path / "alpha", "a1")
    beta = gates.app(tmp_path / "beta", "b1")
    first = _up(alpha, env)
    wait_for("alpha's build to hold the slot", lambda: gates.building("a1"), BUILD_WAIT)
    kill_group(first)  # the CLI and its pip
    first.communicate(timeout=10)

    later = _up(beta, env)
    wait_for("beta's build, on the dead run's slot", lambda: gates.building("b1"), BUILD_WAIT)
    gates.open("b1")
    done = finish(later)

    assert done.code == 0, done.text
    _down(beta)


def test_two_ups_of_one_project_at_once_share_its_build_cap(tmp_path: Path, gates: Gates) -> None:
    """Two architectures of one project, each `up` in its own state folder, cap 1: the
    second builds only once the first's build has ended, then both succeed."""
    alpha, beta, first, second = _second_waits_for_the_first(tmp_path, gates)

    _never("beta built past the project's cap", lambda: gates.building("b1"), 3.0)
    gates.open("a1")
    assert finish(first).code == 0
    wait_for("beta's build, on the freed slot", lambda: gates.building("b1"), BUILD_WAIT)
    gates.open("b1")
    done = finish(second)

    assert done.code == 0, done.text
    _down(alpha)
    _down(beta)


def test_ctrl_c_while_waiting_for_a_slot_cancels_at_once(tmp_path: Path, gates: Gates) -> None:
    """Ctrl-C on an `up` whose builds wait for the project's slots: it ends `cancelled`
    (exit 130) without waiting, its builds never ran, and the run holding the slot goes on."""
    alpha, beta, first, second = _second_waits_for_the_first(tmp_path, gates)

    kill_group(second, signal.SIGINT)
    done = finish(second, timeout=30)

    assert done.code == 130, done.text
    assert "cancelled" in done.text, done.text
    assert not gates.building("b1")
    status = run_cli("status", "--file", str(beta), "--json")
    assert '"status": "cancelled"' in status.out, status.text
    gates.open("a1")
    assert finish(first).code == 0
    _down(alpha)


def _second_waits_for_the_first(
    tmp_path: Path, gates: Gates
) -> tuple[Path, Path, subprocess.Popen[str], subprocess.Popen[str]]:
    """Two architectures of one project, each `up` in its own state folder: alpha's build
    holds the one slot (its gate shut), beta's shows `waiting`. Returns both folders and
    both processes."""
    env = _env(tmp_path)
    alpha = gates.app(tmp_path / "alpha", "a1")
    beta = gates.app(tmp_path / "beta", "b1")
    first = _up(alpha, env)
    wait_for("alpha's build to hold the slot", lambda: gates.building("a1"), BUILD_WAIT)
    second = _up(beta, env)
    wait_for("beta's build to wait for a slot", lambda: _shows_waiting(second), 30)
    return alpha, beta, first, second
