"""The running instances of local services, and the records a later command finds them by.

A service is known by its key, `<project>/<environment>/<service>`, so two environments
of one architecture never replace each other. Its record, `<state_dir>/run/<key>.json`,
names the instance that serves. An instance is recorded *before* it starts
(`<state_dir>/run/<key>/starting/<instance>.json`), so a CLI killed during a health wait
leaves a record that `down` reads, never an unknown process. Every process of an instance
carries the marker `ARCHDEPLOY_SERVICE_ID=<state_id>/<key>/<instance>` in its
environment: stopping a service signals every process marked with its key, descendants
that left its process group or session included.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from shared.adapters.local.processes import (
    file_lock,
    start_time,
    stop_group,
    stop_marked,
    write_json_atomic,
)

log = logging.getLogger(__name__)

Record = dict[str, Any]

_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")


def component(value: str, default: str) -> str:
    """`value` as one path component: itself when it is a plain name, else a digest."""
    value = value or default
    if _COMPONENT.fullmatch(value) and value not in (".", ".."):
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()[:16]


class Instances:
    """Records and processes of the services of one state folder."""

    def __init__(self, run_dir: Path, state_id: str) -> None:
        self.run_dir = run_dir
        self.state_id = state_id

    def marker(self, key: str, instance: str = "") -> str:
        return f"{self.state_id}/{key}/{instance}"

    def record_path(self, key: str) -> Path:
        return self.run_dir / f"{key}.json"

    def starting_dir(self, key: str) -> Path:
        return self.run_dir / key / "starting"

    def lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        path = self.run_dir / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return file_lock(path)

    def read(self, key: str) -> Record | None:
        return read_json(self.record_path(key))

    def starting(self, key: str) -> list[Record]:
        records = (read_json(p) for p in sorted(self.starting_dir(key).glob("*.json")))
        return [r for r in records if r is not None]

    def note_starting(self, key: str, record: Record) -> None:
        directory = self.starting_dir(key)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json_atomic(directory / f"{record['instance']}.json", record)

    def forget_starting(self, key: str, instance: str) -> None:
        (self.starting_dir(key) / f"{instance}.json").unlink(missing_ok=True)

    def commit(self, key: str, change: Callable[[], Record]) -> None:
        """Under the key's lock, run `change` (which routes traffic and returns the record
        of the revision that now serves most) and record what it returns.

        Instances that a dead archdeploy process left starting are stopped here."""
        with self.lock(key):
            record = change()
            write_json_atomic(self.record_path(key), record)
            self.forget_starting(key, str(record.get("instance", "")))
            stale = [r for r in self.starting(key) if not psutil.pid_exists(r.get("cli_pid", 0))]
            for leftover in stale:
                log.warning("%s: stopping %s, left starting by a dead archdeploy", key, leftover)
                self.stop_instance(leftover)
                self.forget_starting(key, str(leftover.get("instance", "")))

    def stop_instance(self, record: Record) -> bool:
        """Stop one instance (its group, then anything carrying its marker); returns
        whether anything was running."""
        running = alive(record)
        if running:
            pid = int(record["pid"])
            if not stop_group(pid, int(record.get("pgid") or pid), record.get("proc_start")):
                log.warning("%s: process group of %d survived SIGKILL", record.get("service"), pid)
        marker = record.get("marker")
        if marker:
            running = stop_marked(str(marker)) > 0 or running
        root = record.get("root")
        if root:
            shutil.rmtree(root, ignore_errors=True)
        return running

    def stop_key(self, key: str) -> bool:
        """Stop every instance of `key`, serving or starting, and forget its record.
        Returns whether anything was running."""
        with self.lock(key):
            records = [r for r in [self.read(key), *self.starting(key)] if r is not None]
            running = any([self.stop_instance(r) for r in records])
            running = stop_marked(self.marker(key)) > 0 or running
            self.record_path(key).unlink(missing_ok=True)
        return running

    def known_keys(self) -> list[str]:
        """Every key with a record (serving or starting) in this state folder."""
        found = {
            str(p.relative_to(self.run_dir).with_suffix(""))
            for p in self.run_dir.glob("*/*/*.json")
        }
        found |= {
            str(p.parent.parent.relative_to(self.run_dir))
            for p in self.run_dir.glob("*/*/*/starting/*.json")
        }
        return sorted(found)


def alive(record: Record) -> bool:
    started = record.get("proc_start")
    pid = record.get("pid")
    return pid is not None and started is not None and start_time(int(pid)) == started


def read_json(path: Path) -> Record | None:
    try:
        record: Record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable record %s: %s", path, exc)
        return None
    return record
