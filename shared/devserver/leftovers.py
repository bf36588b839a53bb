"""What `archdeploy dev` started, written down so that the next `dev` can clean up after
one that died without stopping anything (`kill -9`, a closed terminal, an OOM kill).

`STATE_DIR/dev/children.json` holds the dev process (pid and start time) and each
child's process group (its leader's pid and start time). A child's group outlives its
leader: the emulators' JVMs are grandchildren under a `gcloud` wrapper. A group counts
as a leftover while a live process in it started no earlier than its recorded leader,
so a group id reused by a stranger since is left alone.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared.adapters.local.processes import start_time, write_json_atomic
from shared.errors import UsageError

log = logging.getLogger(__name__)
RECORD = "children.json"
_PROC = Path("/proc")


@dataclass(frozen=True)
class Started:
    name: str
    pgid: int  # == the leader's pid: each child starts its own session
    started: int  # the leader's start time (clock ticks since boot)


def record(state_dir: Path, children: list[Started]) -> None:
    """Write down this dev process and `children` (replacing what was there)."""
    me = os.getpid()
    document = {
        "dev_pid": me,
        "dev_started": start_time(me),
        "children": list(map(asdict, children)),
    }
    write_json_atomic(state_dir / RECORD, document)


def forget(state_dir: Path) -> None:
    (state_dir / RECORD).unlink(missing_ok=True)


def stop_leftovers(state_dir: Path, grace: float = 5.0) -> list[str]:
    """Stop what a dead `dev` left running; returns the names of the groups stopped.

    Raises UsageError when the `dev` that wrote the record is still running."""
    document = _read(state_dir / RECORD)
    if document is None:
        return []
    pid, started = document.get("dev_pid"), document.get("dev_started")
    if isinstance(pid, int) and pid != os.getpid() and started and start_time(pid) == started:
        raise UsageError(
            f"another `archdeploy dev` (pid {pid}) is running with {state_dir}: stop it "
            "first (Ctrl-C in its terminal), or give this one another --state-dir"
        )
    stopped = []
    for child in document.get("children") or []:
        try:
            entry = Started(str(child["name"]), int(child["pgid"]), int(child["started"]))
        except (KeyError, TypeError, ValueError):
            continue
        if _members(entry):
            log.warning("stopping %s (group %d), left by a dead dev", entry.name, entry.pgid)
            _stop(entry, grace)
            stopped.append(entry.name)
    forget(state_dir)
    return stopped


def _read(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _members(entry: Started) -> list[int]:
    """Live processes of the group that started no earlier than its recorded leader."""
    found = []
    for stat in _PROC.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == entry.pgid and int(fields[19]) >= entry.started:
            found.append(int(stat.parent.name))
    return found


def _stop(entry: Started, grace: float) -> None:
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(entry.pgid, signum)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _members(entry):
                return
            time.sleep(0.1)
