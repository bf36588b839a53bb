"""What a local service gets that a container would: its command, environment and secrets.

What an image runs is chosen at build time, as a buildpack would:
- the `web:` line of a `Procfile`, through `/bin/sh -c` (so `$PORT` expands);
- otherwise `python main.py` (or `python app.py`).
A Procfile reaches the deployer's interpreter as `python`/`python3` on PATH (shims).

Secret Manager is not available locally: each `secret_environment_vars` entry NAME takes
the value of the host's `ARCHDEPLOY_SECRET_<NAME>`.
"""

from __future__ import annotations

import os
import shlex
import threading
from pathlib import Path

from shared.adapters.local.oci_images import ImageConfig
from shared.architecture.model import DeploymentSpec
from shared.deployer import Target
from shared.errors import BackendError

SECRET_PREFIX = "ARCHDEPLOY_SECRET_"
# What a service inherits from the host; everything else comes from its spec, like a container.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "SYSTEMROOT")
IMAGE_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
PYTHON_MAINS = ("main.py", "app.py")


def image_command(files: dict[str, Path]) -> list[str]:
    if "Procfile" in files:
        for line in files["Procfile"].read_text().splitlines():
            if line.startswith("web:") and line[4:].strip():
                return ["/bin/sh", "-c", line[4:].strip()]
        raise BackendError("the Procfile has no `web:` line")
    for main in PYTHON_MAINS:
        if main in files:
            return ["python", main]
    raise BackendError("nothing to run: add a Procfile with a `web:` line, or a main.py")


def local_secrets(spec: DeploymentSpec) -> dict[str, str]:
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


def container_environment(
    service_name: str,
    revision: str,
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
    env.update(
        PORT=str(port), K_SERVICE=service_name, K_REVISION=revision, K_CONFIGURATION=service_name
    )
    return env


def write_python_shims(bin_dir: Path, python: str) -> None:
    # Scripts rather than symlinks: a venv's interpreter finds its venv by the path it runs from.
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):
        staging = bin_dir / f".{name}.{os.getpid()}.{threading.get_ident()}"
        staging.write_text(f'#!/bin/sh\nexec {shlex.quote(python)} "$@"\n')
        staging.chmod(0o755)
        os.replace(staging, bin_dir / name)


def source_dir(service_name: str, spec: DeploymentSpec) -> Path:
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


def health_path(target: Target | None) -> str:
    path = target.health_check.path if target and target.health_check else "/"
    return path if path.startswith("/") else f"/{path}"
