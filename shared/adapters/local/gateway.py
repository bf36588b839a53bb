"""Stable URLs for local services: the ports, routes and process of the local front end.

Each service (by key, `<project>/<environment>/<service>`) gets a loopback port once,
kept in `<state_dir>/frontend/ports.json` (or the one `deployment.local_port` pins), and
keeps it across redeploys, rollbacks, `down` and restarts of archdeploy; a tagged revision
gets a second port, kept as `<key>#<tag>` until the tag is removed. The front end
(`shared.adapters.local.frontend`) serves those ports and forwards each to the revisions
named in `routes.json`, by percent. It runs detached like a service, recorded in `process.json`
(pid, start time, control port) and marked `ARCHDEPLOY_SERVICE_ID=<state_id>/_frontend/...`
so `teardown_all` and orphan scans find it; a command that finds it dead starts it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import shared
from shared.adapters.local.instances import alive, read_json
from shared.adapters.local.processes import (
    SERVICE_MARKER,
    file_lock,
    kept_port,
    probe,
    spawn,
    stop_group,
    stop_marked,
    wait_healthy,
    write_json_atomic,
)
from shared.errors import BackendError

log = logging.getLogger(__name__)

_START_TIMEOUT = 20.0  # seconds for a new front end to answer its health check
_RELOAD_TIMEOUT = 60.0  # seconds: covers the front end's 30 s drain

TAG_SEPARATOR = "#"  # a tag's port is kept in ports.json as `<key>#<tag>`

Record = dict[str, Any]


class Gateway:
    """The front end of one state folder, seen from a CLI."""

    def __init__(self, state_dir: Path, state_id: str, python: str) -> None:
        self.folder = state_dir / "frontend"
        self.marker_prefix = f"{state_id}/_frontend/"
        self.python = python

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"

    def port_for(self, key: str, pinned: int | None = None) -> int:
        """The key's stable port: `pinned` when given, else the one it got before, else a
        free one. Raises BackendError when `pinned` belongs to another service."""
        with self._locked():
            ports = self._ports()
            taken = {p: k for k, p in ports.items() if k != key}
            if pinned is not None:
                if pinned in taken:
                    raise BackendError(
                        f"deployment.local_port {pinned} of {key} is already the port of"
                        f" {taken[pinned]}: pin another port"
                    )
                port = pinned
            else:
                port = ports.get(key) or kept_port()
                while port in taken:
                    port = kept_port()
            if ports.get(key) != port:
                ports[key] = port
                write_json_atomic(self.folder / "ports.json", ports)
        return port

    def known_port(self, key: str) -> int | None:
        return self._ports().get(key)

    def serve(self, key: str, service: str, routes: dict[int, Record]) -> None:
        """Make `routes` (port -> `{"tag", "backends"}`, see `routing`) the routes of `key`,
        replacing all it had, once revisions no longer routed have drained.

        Raises BackendError when the front end cannot start or cannot listen on a port."""
        with self._locked():
            table = {p: r for p, r in self._routes().items() if r.get("key") != key}
            for port, route in routes.items():
                table[str(port)] = {"key": key, "service": service, **route}
            write_json_atomic(self.folder / "routes.json", {"routes": table})
        answer = self.reload()
        failed = [answer["failed"][str(p)] for p in routes if str(p) in answer.get("failed", {})]
        if failed:
            raise BackendError(f"{service}: {'; '.join(failed)}: pin a free port")
        if not answer.get("drained", True):
            log.warning("%s: an old revision still had requests in flight after 30 s", key)

    def forget_port(self, name: str) -> None:
        """Free the port kept for `name` (a key, or `<key>#<tag>`)."""
        with self._locked():
            ports = self._ports()
            if ports.pop(name, None) is not None:
                write_json_atomic(self.folder / "ports.json", ports)

    def tag_ports(self, key: str) -> dict[str, int]:
        """Tag -> its port, for the tags of `key` that have one."""
        prefix = f"{key}{TAG_SEPARATOR}"
        return {k[len(prefix) :]: p for k, p in self._ports().items() if k.startswith(prefix)}

    def unroute(self, key: str) -> None:
        """Stop serving `key`'s ports (the stable port's number stays reserved, its tags'
        are freed); stops the front end when nothing is left to serve."""
        for tag in self.tag_ports(key):
            self.forget_port(f"{key}{TAG_SEPARATOR}{tag}")
        with self._locked():
            routes = {p: r for p, r in self._routes().items() if r.get("key") != key}
            write_json_atomic(self.folder / "routes.json", {"routes": routes})
        if not routes:
            self.stop()
        elif self.running() is not None:
            self.reload()

    def reload(self) -> Record:
        record = self.ensure()
        request = urllib.request.Request(
            f"http://127.0.0.1:{record['control_port']}/reload", data=b"", method="POST"
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=_RELOAD_TIMEOUT) as response:
                answer: Record = json.loads(response.read())
        except (OSError, ValueError) as exc:
            raise BackendError(f"the local front end did not reload its routes: {exc}") from exc
        return answer

    def running(self) -> Record | None:
        """The front end's record if it is alive and answers its health check."""
        record = read_json(self.folder / "process.json")
        if record is None or not alive(record):
            return None
        healthy, _ = probe(f"http://127.0.0.1:{record['control_port']}/healthz", 2.0)
        return record if healthy else None

    def ensure(self) -> Record:
        """The running front end, started (again) when it is not; it serves `routes.json`.

        Raises BackendError when it does not get healthy."""
        with self._locked():
            record = self.running()
            if record is not None:
                return record
            self._stop_leftovers()
            return self._start()

    def stop(self, *, forget_routes: bool = False) -> bool:
        """Stop the front end (and forget every route); returns whether it was running."""
        if not self.folder.is_dir():
            return stop_marked(self.marker_prefix) > 0
        with self._locked():
            if forget_routes:  # and the tags' ports; stable ports stay reserved
                write_json_atomic(self.folder / "routes.json", {"routes": {}})
                ports = {k: p for k, p in self._ports().items() if TAG_SEPARATOR not in k}
                write_json_atomic(self.folder / "ports.json", ports)
            return self._stop_leftovers()

    def _start(self) -> Record:
        instance = uuid.uuid4().hex[:8]
        control_port = kept_port()
        record: Record = {
            "instance": instance,
            "marker": self.marker_prefix + instance,
            "control_port": control_port,
            "log": str(self.folder / "frontend.log"),
            "cli_pid": os.getpid(),
        }
        write_json_atomic(self.folder / "process.json", record)
        env = {k: v for k, v in os.environ.items() if k != SERVICE_MARKER}
        env[SERVICE_MARKER] = record["marker"]
        code_root = Path(shared.__file__).resolve().parents[1]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_root), env.get("PYTHONPATH")]))
        command = [self.python, "-m", "shared.adapters.local.frontend", str(self.folder)]
        try:
            process = spawn(
                [*command, str(control_port)], env=env, cwd=code_root, log_path=Path(record["log"])
            )
        except OSError as exc:
            raise BackendError(f"cannot start the local front end: {exc}") from exc
        record.update(pid=process.pid, pgid=process.pgid, proc_start=process.started)
        write_json_atomic(self.folder / "process.json", record)
        failure = wait_healthy(
            process, f"http://127.0.0.1:{control_port}/healthz", _START_TIMEOUT, None
        )
        if failure is not None:
            self._stop_leftovers()
            raise BackendError(
                f"the local front end did not start: {failure} (see {record['log']})"
            )
        log.info("local front end started (pid %d, control port %d)", process.pid, control_port)
        return record

    def _stop_leftovers(self) -> bool:
        record = read_json(self.folder / "process.json")
        running = record is not None and alive(record)
        if record is not None and running:
            pid = int(record["pid"])
            stop_group(pid, int(record.get("pgid") or pid), record.get("proc_start"))
        running = stop_marked(self.marker_prefix) > 0 or running
        (self.folder / "process.json").unlink(missing_ok=True)
        return running

    def _ports(self) -> dict[str, int]:
        document = read_json(self.folder / "ports.json") or {}
        return {str(k): int(v) for k, v in document.items()}

    def _routes(self) -> dict[str, Record]:
        document = read_json(self.folder / "routes.json") or {}
        return dict(document.get("routes", {}))

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        # flock locks belong to the open file: this excludes other threads too.
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return file_lock(self.folder / "gateway.lock")
