"""The embedded `ContainerDeployer`: local OCI images, run as local processes the Cloud Run way.

`build` writes a content-addressed image of the service's source into the OCI image
layout `<state_dir>/images`. `deploy_service` unpacks it into
`<state_dir>/run/<service>/<digest12>/` and runs it on a free loopback port with `PORT`
set, then waits for its health check. What runs is recorded in
`<state_dir>/run/<service>.json`, so a later process (`archdeploy down`) can stop it.

What an image runs is chosen at build time, as a buildpack would:
- the `web:` line of a `Procfile`, through `/bin/sh -c` (so `$PORT` expands);
- otherwise `python main.py` (or `python app.py`).
`python` is the deployer's configured interpreter (`python=`, default: the one running
archdeploy); a Procfile reaches it as `python`/`python3` on PATH.

Secret Manager is not available locally: each `secret_environment_vars` entry NAME takes
the value of the host's `ARCHDEPLOY_SECRET_<NAME>`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.adapters.local_processes import (
    Spawned,
    file_lock,
    free_port,
    spawn,
    start_time,
    stop_group,
    tail,
    wait_healthy,
    write_json_atomic,
)
from shared.adapters.oci_images import ImageConfig, OciImageStore, collect_files, image_digest
from shared.architecture import DeploymentSpec
from shared.deployer import Target
from shared.errors import BackendError

log = logging.getLogger(__name__)

SECRET_PREFIX = "ARCHDEPLOY_SECRET_"
# What a service inherits from the host; everything else comes from its spec, like a container.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "SYSTEMROOT")
IMAGE_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
PYTHON_MAINS = ("main.py", "app.py")
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")

Record = dict[str, Any]


class LocalDeployer:
    """Builds OCI images under `state_dir/images` and runs them as local processes."""

    def __init__(
        self, state_dir: Path, *, health_timeout: float = 30.0, python: str = sys.executable
    ) -> None:
        # Absolute: records hold paths that a later CLI, maybe run elsewhere, must find.
        self.state_dir = Path(state_dir).absolute()
        self.health_timeout = health_timeout
        self.python = python
        self.images = OciImageStore(self.state_dir / "images")
        self._run_dir = self.state_dir / "run"

    def build(
        self, service_name: str, spec: DeploymentSpec, *, target: Target | None = None
    ) -> str:
        """Image `spec.source_path` (+ `buildable_module_path`); returns `...@sha256:<digest>`.

        Raises BackendError for a missing or relative source, nothing to run, or pip failing.
        """
        _check_name(service_name)
        directory = _source_dir(service_name, spec)
        try:
            files = collect_files(directory, spec.config_templates)
            command = _command(files)
            layers = [self.images.add_layer(files, prefix="app")]
            if "requirements.txt" in files:
                requirements = files["requirements.txt"]
                layers.append(
                    self.images.requirements_layer(requirements, python=self.python, cwd=directory)
                )
            image = self.images.commit(
                service_name, layers, command=command, env=IMAGE_ENV, working_dir="/app"
            )
        except (BackendError, OSError) as exc:
            retryable = isinstance(exc, BackendError) and exc.retryable
            raise BackendError(f"building {service_name}: {exc}", retryable=retryable) from exc
        log.info("built %s: %s", service_name, image)
        return image

    def deploy_service(
        self,
        service_name: str,
        service_account_email: str,
        spec: DeploymentSpec,
        *,
        target: Target | None = None,
    ) -> str:
        """Run `spec.image` on a free loopback port; returns its URL once healthy.

        A running version of the service is stopped once the new one is healthy.
        `service_account_email` has no local meaning and is ignored.
        Raises BackendError naming the service, with its last output when it failed to start.
        """
        _check_name(service_name)
        if not spec.image:
            raise BackendError(f"deploying {service_name}: no image: build it first")
        try:
            record = self._start(service_name, spec, _health_path(target))
        except (BackendError, OSError) as exc:
            raise BackendError(f"deploying {service_name}: {exc}") from exc
        self._replace_record(service_name, record)
        log.info("deployed %s at %s (pid %d)", service_name, record["url"], record["pid"])
        return str(record["url"])

    def build_and_deploy(
        self,
        service_name: str,
        service_account_email: str,
        spec: DeploymentSpec,
        *,
        target: Target | None = None,
    ) -> str:
        image = self.build(service_name, spec, target=target)
        deployable = spec.model_copy(update={"image": image})
        return self.deploy_service(service_name, service_account_email, deployable, target=target)

    def teardown(self, service_name: str, *, target: Target | None = None) -> None:
        """Stop the service's process group and forget it; an unknown service is a no-op."""
        _check_name(service_name)
        self._run_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self._run_dir / f"{service_name}.lock"):
            record = self._read_record(service_name)
            if record is None:
                return
            self._stop(record)
            (self._run_dir / f"{service_name}.json").unlink(missing_ok=True)
        log.info("stopped %s (pid %d)", service_name, record["pid"])

    def teardown_all(self) -> None:
        for path in sorted(self._run_dir.glob("*.json")):
            self.teardown(path.stem)

    def running(self) -> dict[str, Record]:
        """Service -> its record, for every recorded service whose process is still alive."""
        records = (self._read_record(path.stem) for path in sorted(self._run_dir.glob("*.json")))
        return {r["service"]: r for r in records if r is not None and _alive(r)}

    def _start(self, service_name: str, spec: DeploymentSpec, health_path: str) -> Record:
        secrets = _local_secrets(spec)
        digest = image_digest(spec.image)
        root = self._run_dir / service_name / digest.removeprefix("sha256:")[:12]
        config = self.images.unpack(spec.image, root)
        if not config.command:
            raise BackendError(f"image {spec.image} has no command (Cmd): build it again")
        _write_python_shims(root / "bin", self.python)
        port = free_port()
        env = _environment(service_name, spec, config, root, port, secrets)
        command = (
            [self.python, *config.command[1:]] if config.command[0] == "python" else config.command
        )
        log_path = self._run_dir / service_name / "output.log"
        cwd = root / config.working_dir.lstrip("/")
        process = spawn(command, env=env, cwd=cwd, log_path=log_path)
        url = f"http://127.0.0.1:{port}"
        self._await_health(process, url + health_path, log_path)
        return {
            "service": service_name,
            "pid": process.pid,
            "pgid": process.pgid,
            "proc_start": process.started,
            "port": port,
            "url": url,
            "image": spec.image,
            "root": str(root),
            "log": str(log_path),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def _await_health(self, process: Spawned, url: str, log_path: Path) -> None:
        failure: str | None = "interrupted"
        try:
            failure = wait_healthy(process, url, self.health_timeout)
        finally:  # also on KeyboardInterrupt: a half-started service must not linger
            if failure is not None:
                stop_group(process.pid, process.pgid, process.started)
        if failure is not None:
            output = tail(log_path, process.log_offset)
            raise BackendError(f"{failure}; last output ({log_path}):\n{output}")

    def _replace_record(self, service_name: str, record: Record) -> None:
        with file_lock(self._run_dir / f"{service_name}.lock"):
            old = self._read_record(service_name)
            write_json_atomic(self._run_dir / f"{service_name}.json", record)
        if old is not None and old["pid"] != record["pid"]:
            self._stop(old)
            if old.get("root") and old["root"] != record["root"]:
                shutil.rmtree(old["root"], ignore_errors=True)

    def _read_record(self, service_name: str) -> Record | None:
        path = self._run_dir / f"{service_name}.json"
        try:
            record: Record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable record %s: %s", path, exc)
            return None
        return record

    def _stop(self, record: Record) -> None:
        pid = int(record["pid"])
        pgid = int(record.get("pgid", pid))
        if not stop_group(pid, pgid, record.get("proc_start")):
            log.warning("%s: process group %d survived SIGKILL", record.get("service"), pgid)


def _alive(record: Record) -> bool:
    started = record.get("proc_start")
    return started is not None and start_time(int(record["pid"])) == started


def _check_name(service_name: str) -> None:
    # The name becomes part of file paths under state_dir.
    if not _SERVICE_NAME.fullmatch(service_name):
        raise BackendError(f"service name {service_name!r}: use letters, digits, '-' and '_'")


def _source_dir(service_name: str, spec: DeploymentSpec) -> Path:
    source = Path(spec.source_path)
    if not source.is_absolute():
        raise BackendError(
            f"building {service_name}: source_path {spec.source_path!r} is not absolute "
            "(callers resolve it against the architecture file)"
        )
    directory = source / spec.buildable_module_path if spec.buildable_module_path else source
    if not directory.is_dir():
        raise BackendError(f"building {service_name}: source directory {directory} does not exist")
    return directory


def _command(files: dict[str, Path]) -> list[str]:
    if "Procfile" in files:
        for line in files["Procfile"].read_text().splitlines():
            if line.startswith("web:") and line[4:].strip():
                return ["/bin/sh", "-c", line[4:].strip()]
        raise BackendError("the Procfile has no `web:` line")
    for main in PYTHON_MAINS:
        if main in files:
            return ["python", main]
    raise BackendError("nothing to run: add a Procfile with a `web:` line, or a main.py")


def _health_path(target: Target | None) -> str:
    path = target.health_check.path if target and target.health_check else "/"
    return path if path.startswith("/") else f"/{path}"


def _local_secrets(spec: DeploymentSpec) -> dict[str, str]:
    values: dict[str, str] = {}
    missing: list[str] = []
    for secret in spec.secret_environment_vars:
        host_name = SECRET_PREFIX + secret.name
        if host_name in os.environ:
            values[secret.name] = os.environ[host_name]
        else:
            missing.append(f"export {host_name}=<value of secret {secret.value_from!r}>")
    if missing:
        raise BackendError("Secret Manager is not available locally: " + "; ".join(missing))
    return values


def _environment(
    service_name: str,
    spec: DeploymentSpec,
    config: ImageConfig,
    root: Path,
    port: int,
    secrets: dict[str, str],
) -> dict[str, str]:
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    env.update(config.env)
    env["PATH"] = os.pathsep.join([str(root / "bin"), env.get("PATH", os.defpath)])
    if (root / "deps").is_dir():
        env["PYTHONPATH"] = str(root / "deps")
    env.update(spec.environment_vars)
    env.update(secrets)
    # Set last: Cloud Run reserves these and a spec cannot override them.
    revision = f"{service_name}-{image_digest(spec.image).removeprefix('sha256:')[:12]}"
    env.update(
        PORT=str(port), K_SERVICE=service_name, K_REVISION=revision, K_CONFIGURATION=service_name
    )
    return env


def _write_python_shims(bin_dir: Path, python: str) -> None:
    # Scripts rather than symlinks: a venv's interpreter finds its venv by the path it runs from.
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):
        staging = bin_dir / f".{name}.{os.getpid()}.{threading.get_ident()}"
        staging.write_text(f'#!/bin/sh\nexec {shlex.quote(python)} "$@"\n')
        staging.chmod(0o755)
        os.replace(staging, bin_dir / name)
