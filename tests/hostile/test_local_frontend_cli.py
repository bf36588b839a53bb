"""The local front end through the real CLI: one URL across `up`s, a killed front end
started again by `status` and `up`, and `down` leaving no process behind."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psutil

from tests.hostile.conftest import (
    SERVICE,
    answers,
    architecture,
    get,
    leftovers,
    run_cli,
)


def _kill_front_end(state: Path) -> None:
    record = json.loads((state / "frontend" / "process.json").read_text())
    group = [p for p in psutil.process_iter() if _in_group(p, os.getpgid(int(record["pid"])))]
    os.killpg(os.getpgid(int(record["pid"])), signal.SIGKILL)
    psutil.wait_procs(group, timeout=10)


def _in_group(proc: psutil.Process, pgid: int) -> bool:
    try:
        return os.getpgid(proc.pid) == pgid
    except OSError:
        return False


def _up(state: Path, app: Path) -> str:
    up = run_cli("--state-dir", str(state), "up", str(app), "--json")
    assert up.code == 0, up.text
    return str(json.loads(up.out)["urls"]["web"])


def test_the_url_survives_clis_a_dead_front_end_is_restarted_and_down_cleans(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    app = architecture(tmp_path / "app", {"web": SERVICE}, env={"web": {"V": "1"}})
    url = _up(state, app)
    architecture(tmp_path / "app", {"web": SERVICE}, env={"web": {"V": "2"}})

    assert _up(state, app) == url  # another CLI process, a new revision, the same URL
    assert get(url)["V"] == "2"

    _kill_front_end(state)
    assert not answers(url)
    status = run_cli("--state-dir", str(state), "status")
    assert status.code == 0, status.text
    assert "hostile/default/web" in status.err and "serving" in status.err
    assert get(url)["V"] == "2"  # `status` started the front end again

    _kill_front_end(state)
    assert _up(state, app) == url  # nothing changed: `up` only restarts the front end
    assert get(url)["V"] == "2"

    _kill_front_end(state)
    down = run_cli("--state-dir", str(state), "down", str(app))
    assert down.code == 0, down.text
    assert not answers(url)
    assert leftovers(tmp_path) == []
