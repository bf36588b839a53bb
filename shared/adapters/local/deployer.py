"""The embedded `ContainerDeployer`: local OCI images, run as local processes the Cloud Run way.

`build` writes a content-addressed image of the service's source into the OCI image
layout `<state_dir>/images`. `deploy_service` unpacks it into a new instance folder and
runs it on a free loopback port with `PORT` set, then waits for its health check; what
runs is recorded so a later process (`archdeploy down`) can stop it, by project,
environment and name (`shared.adapters.local.instances`).

Repeated runs skip unchanged work (`IncrementalDeployer`): `cached_image` finds the image
built from the same input digest (`shared.adapters.input_digest`); `deployed` reports the
running deploy's config fingerprint when its process is alive and healthy; `rollback`
starts a saved deployment again (`shared.adapters.local.history`). Revisions, tags and
traffic splits (`TrafficDeployer`) come from `shared.adapters.local.traffic`.

What an image runs, its environment and secrets follow `container`; `python` is the
deployer's interpreter (default: the one running archdeploy).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.adapters.input_digest import input_digest
from shared.adapters.local.container import (
    IMAGE_ENV,
    container_environment,
    health_path,
    image_command,
    local_secrets,
    source_dir,
    write_python_shims,
)
from shared.adapters.local.gateway import Gateway
from shared.adapters.local.history import DeploymentHistory, revision_id
from shared.adapters.local.instances import Instances, alive, component
from shared.adapters.local.oci_images import OciImageStore, collect_files, image_digest
from shared.adapters.local.processes import (
    SERVICE_MARKER,
    Spawned,
    free_port,
    probe_threshold,
    spawn,
    stop_marked,
    tail,
    wait_healthy,
)
from shared.adapters.local.traffic import TrafficMixin
from shared.architecture.model import DeploymentSpec
from shared.deployer import (
    Deployed,
    Target,
    build_then_deploy,
    config_fingerprint,
    current_target,
)
from shared.errors import BackendError

log = logging.getLogger(__name__)

_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_PROBE_TIMEOUT = 2.0  # seconds, for `deployed`'s health check

Record = dict[str, Any]


class LocalDeployer(TrafficMixin):
    """Builds OCI images under `state_dir/images` and runs them as local processes."""

    def __init__(
        self,
        state_dir: Path,
        *,
        health_timeout: float = 30.0,
        python: str = sys.executable,
        project: str = "",
        environment: str = "",
    ) -> None:
        # Absolute: records hold paths that a later CLI, maybe run elsewhere, must find.
        self.state_dir = Path(state_dir).absolute()
        self.health_timeout = health_timeout
        self.python = python
        # A local service is known by project, environment and name (see `_key`): the
        # project comes from the task (else this), the environment from the command.
        self.project = project
        self.environment = environment
        # Set on Ctrl-C: health waits give up at once and half-started services stop.
        self.interrupted = threading.Event()
        self.images = OciImageStore(self.state_dir / "images")
        self._run_dir = self.state_dir / "run"
        self.history = DeploymentHistory(self._run_dir)
        # Unique to this state folder: its services' markers never match another's.
        state_id = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        self.instances = Instances(self._run_dir, state_id)
        # The front end runs on archdeploy's own interpreter (it needs aiohttp), not `python`.
        self.gateway = Gateway(self.state_dir, state_id, sys.executable)
        # Part of every input digest: deps installed by another interpreter differ.
        self._builder = f"local-oci python={os.path.realpath(python)}"

    def build(
        self, service_name: str, spec: DeploymentSpec, *, target: Target | None = None
    ) -> str:
        """Image `spec.source_path` (+ `buildable_module_path`); returns `...@sha256:<digest>`.

        Raises BackendError for a missing or relative source, nothing to run, or pip failing.
        """
        _check_name(service_name)
        directory = source_dir(service_name, spec)
        try:
            files = collect_files(directory, spec.config_templates)
            digest = input_digest(files, builder=self._builder)
            command = image_command(files)
            layers = [self.images.add_layer(files, prefix="app")]
            if "requirements.txt" in files:
                requirements = files["requirements.txt"]
                layers.append(
                    self.images.requirements_layer(requirements, python=self.python, cwd=directory)
                )
            image = self.images.commit(
                service_name, layers, command=command, env=IMAGE_ENV, working_dir="/app"
            )
            self.images.remember_input(service_name, digest, image)
        except (BackendError, OSError) as exc:
            retryable = isinstance(exc, BackendError) and exc.retryable
            raise BackendError(f"building {service_name}: {exc}", retryable=retryable) from exc
        log.info("built %s: %s", service_name, image)
        return image

    def cached_image(
        self, service_name: str, spec: DeploymentSpec, *, target: Target | None = None
    ) -> str | None:
        """The image `build` made from exactly this input, or None.

        Never raises: a source it cannot read is a miss, and `build` reports it.
        """
        try:
            _check_name(service_name)
            files = collect_files(source_dir(service_name, spec), spec.config_templates)
            digest = input_digest(files, builder=self._builder)
        except (BackendError, OSError) as exc:
            log.debug("%s: no cached image: %s", service_name, exc)
            return None
        image = self.images.image_for_input(service_name, digest)
        if image is not None:
            log.info("%s: input %s built before: reusing %s", service_name, digest[:12], image)
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

        A running version of the service is stopped once the new one is healthy, and the
        deployment is saved as a revision a rollback can return to.
        `service_account_email` has no local meaning beyond the config fingerprint.
        Raises BackendError naming the service, with its last output when it failed to start.
        """
        _check_name(service_name)
        if not spec.image:
            raise BackendError(f"deploying {service_name}: no image: build it first")
        saved = self._saved(service_name, service_account_email, spec, target or current_target())
        return self._deploy(service_name, spec, saved, f"deploying {service_name}")

    def _saved(
        self, service_name: str, service_account_email: str, spec: DeploymentSpec, target: Target
    ) -> Record:
        """The deployment as history saves it; its revision is named by its fingerprint."""
        fingerprint = config_fingerprint(service_account_email, spec, target.health_check)
        return {
            "service": service_name,
            "revision": revision_id(service_name, fingerprint),
            "fingerprint": fingerprint,
            "image": spec.image,
            "spec": spec.model_dump(mode="json"),
            "service_account": service_account_email,
            "health_path": health_path(target),
        }

    def deployed(self, service_name: str, *, target: Target | None = None) -> Deployed | None:
        """What runs as `service_name`, if its process is alive and passes its health check."""
        if not _SERVICE_NAME.fullmatch(service_name):
            return None
        key = self._key(service_name, target)
        record = self.instances.read(key)
        port = self.gateway.known_port(key)
        if record is None or port is None or not alive(record):
            return None
        revision_url = str(record.get("revision_url", record["url"]))
        health = revision_url + record.get("health_path", "/")
        healthy, answer = probe_threshold(health, _PROBE_TIMEOUT)
        if not healthy:
            log.info("%s at %s fails its health check (%s)", service_name, revision_url, answer)
            return None
        try:
            self.gateway.ensure()  # a dead front end is started again, serving its routes
        except BackendError as exc:
            log.warning("%s: %s", service_name, exc)
            return None
        return Deployed(
            url=self.gateway.url(port),
            image=str(record["image"]),
            fingerprint=str(record.get("fingerprint", "")),
            revision=str(record.get("revision", "")),
        )

    def rollback(self, service_name: str, revision: str, *, target: Target | None = None) -> str:
        """Start the saved deployment `revision` again in place of what runs; return its
        (stable) URL. Nothing is restarted
        when `revision` is what already runs, healthy.
        Raises BackendError when no such deployment is saved or it does not get healthy.
        """
        _check_name(service_name)
        context = f"rolling back {service_name} to {revision}"
        current = self.deployed(service_name, target=target)
        if current is not None and current.revision == revision:
            log.info("%s: %s is what runs already", context, revision)
            return current.url
        saved = self.history.load(self._key(service_name, target), revision, context)
        try:
            spec = DeploymentSpec.model_validate(saved["spec"])
        except (KeyError, ValueError) as exc:
            raise BackendError(f"{context}: the saved deployment is unusable: {exc}") from exc
        return self._deploy(service_name, spec, saved, context)

    def _deploy(self, service_name: str, spec: DeploymentSpec, saved: Record, context: str) -> str:
        """Start a new revision process; once healthy, the front end sends the stable port
        all traffic to it, and revisions left with neither traffic nor a tag drain and stop."""
        key = self._key(service_name)
        record = self._start_revision(service_name, spec, saved, key, context)
        self.commit_traffic(key, service_name, lambda s: s.serve(record), new=[record])
        self.history.save(key, saved)
        log.info(
            "%s: %s at %s via %s (pid %d)",
            context,
            record["revision"],
            record["revision_url"],
            record["url"],
            record["pid"],
        )
        return str(record["url"])

    def _start_revision(
        self, service_name: str, spec: DeploymentSpec, saved: Record, key: str, context: str
    ) -> Record:
        """A new healthy process of the revision `saved`, not yet routed."""
        try:
            port = self.gateway.port_for(key, spec.local_port)
            start = _Start(key, str(saved["revision"]), str(saved["health_path"]), port)
            record = self._start(service_name, spec, start)
        except (BackendError, OSError) as exc:
            raise BackendError(f"{context}: {exc}") from exc
        record.update(fingerprint=saved["fingerprint"], pinned_port=spec.local_port)
        return record

    def build_and_deploy(
        self,
        service_name: str,
        service_account_email: str,
        spec: DeploymentSpec,
        *,
        target: Target | None = None,
    ) -> str:
        return build_then_deploy(self, service_name, service_account_email, spec, target=target)

    def teardown(self, service_name: str, *, target: Target | None = None) -> None:
        """Stop every process of the service and forget it, history included; an unknown
        service is a no-op."""
        self.stop(service_name, target=target)

    def stop(self, service_name: str, *, target: Target | None = None) -> bool:
        """`teardown`, saying whether anything of the service was running."""
        _check_name(service_name)
        key = self._key(service_name, target)
        running = self.instances.stop_key(key)
        self.history.forget(key)
        self.gateway.unroute(key)
        log.info("%s: %s", key, "stopped" if running else "was not running")
        return running

    def teardown_all(self) -> None:
        """Stop every service of this state folder, in every project and environment."""
        for key in self.instances.known_keys():
            self.instances.stop_key(key)
            self.history.forget(key)
        self.gateway.stop(forget_routes=True)
        stop_marked(self.instances.marker("")[:-1])

    def running(self) -> dict[str, Record]:
        """Service -> its record, for every service of this environment (and of this
        project, if the deployer has one) whose process is still alive."""
        project, env, _ = self._key("").split("/")
        keys = [
            key
            for key in self.instances.known_keys()
            if key.split("/")[1] == env and (not self.project or key.split("/")[0] == project)
        ]
        records = (self.instances.read(key) for key in keys)
        return {r["service"]: r for r in records if r is not None and alive(r)}

    def service_dir(self, service_name: str) -> Path:
        """Where the service's instances, logs and history live."""
        return self._run_dir / self._key(service_name)

    def record_path(self, service_name: str) -> Path:
        return self.instances.record_path(self._key(service_name))

    def _key(self, service_name: str, target: Target | None = None) -> str:
        target = target or current_target()
        project = component(target.project_id or self.project, "_")
        return f"{project}/{component(self.environment, 'default')}/{service_name}"

    def _start(self, service_name: str, spec: DeploymentSpec, start: _Start) -> Record:
        secrets = local_secrets(spec)
        digest = image_digest(spec.image).removeprefix("sha256:")[:12]
        instance = f"{digest}-{uuid.uuid4().hex[:8]}"
        root = self._run_dir / start.key / instance
        port = free_port()
        url = f"http://127.0.0.1:{port}"  # the revision's own; the front end forwards to it
        record: Record = {
            "service": service_name,
            "key": start.key,
            "instance": instance,
            "marker": self.instances.marker(start.key, instance),
            "revision": start.revision,
            "health_path": start.health_path,
            "port": port,
            "url": self.gateway.url(start.public_port),
            "revision_url": url,
            "public_port": start.public_port,
            "image": spec.image,
            "root": str(root),
            "log": str(self._run_dir / start.key / f"{instance}.log"),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "cli_pid": os.getpid(),
        }
        # Recorded before anything starts: a CLI killed from here on leaves a record.
        self.instances.note_starting(start.key, record)
        try:
            process = self._spawn(service_name, spec, record, secrets)
            record.update(pid=process.pid, pgid=process.pgid, proc_start=process.started)
            self.instances.note_starting(start.key, record)
            self._await_health(process, url + start.health_path, Path(record["log"]))
        except BaseException:  # KeyboardInterrupt too: a half-started service must not linger
            self.instances.stop_instance(record)
            self.instances.forget_starting(start.key, instance)
            raise
        return record

    def _spawn(
        self, service_name: str, spec: DeploymentSpec, record: Record, secrets: dict[str, str]
    ) -> Spawned:
        root = Path(record["root"])
        config = self.images.unpack(spec.image, root)
        if not config.command:
            raise BackendError(f"image {spec.image} has no command (Cmd): build it again")
        write_python_shims(root / "bin", self.python)
        env = container_environment(
            service_name, record["revision"], spec, config, root, record["port"], secrets
        )
        env[SERVICE_MARKER] = record["marker"]
        env.setdefault("SERVICE_URL", record["url"])  # its stable URL, e.g. to register
        command = (
            [self.python, *config.command[1:]] if config.command[0] == "python" else config.command
        )
        cwd = root / config.working_dir.lstrip("/")
        return spawn(command, env=env, cwd=cwd, log_path=Path(record["log"]))

    def _await_health(self, process: Spawned, url: str, log_path: Path) -> None:
        failure = wait_healthy(process, url, self.health_timeout, self.interrupted)
        if failure is not None:
            output = tail(log_path, process.log_offset)
            raise BackendError(f"{failure}; last output ({log_path}):\n{output}")


@dataclass(frozen=True)
class _Start:
    key: str
    revision: str
    health_path: str
    public_port: int  # the service's stable port, served by the front end


def _check_name(service_name: str) -> None:
    # The name becomes part of file paths under state_dir.
    if not _SERVICE_NAME.fullmatch(service_name):
        raise BackendError(f"service name {service_name!r}: use letters, digits, '-' and '_'")
