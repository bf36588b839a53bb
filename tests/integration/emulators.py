"""Session fixtures that run the real Pub/Sub and Firestore emulators on free loopback ports.

Each emulator runs under `shared.devserver.emulators.launch`'s supervisor, which leads a
session of its own: killing only the `gcloud` wrapper would leave the emulator's Java
process running, so teardown signals the supervisor's group and the supervisor ends the
whole session; if pytest itself is killed, the supervisor ends it too. The emulator
variables (`PUBSUB_EMULATOR_HOST`, `FIRESTORE_EMULATOR_HOST`) are set only inside the
function-scoped `pubsub_env` / `firestore_env` fixtures, so unit tests never see a cloud.
A missing emulator fails the run (never skips) and says what to install.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.devserver.emulators import launch

__all__ = [
    "Emulator",
    "firestore_client",
    "firestore_emulator",
    "firestore_env",
    "pubsub_emulator",
    "pubsub_env",
]

PROJECT = "archdeploy-test"
START_TIMEOUT = 60.0
INSTALL_HINT = (
    "install the emulators: apt-get install google-cloud-cli google-cloud-cli-pubsub-emulator "
    "google-cloud-cli-firestore-emulator openjdk-17-jre-headless"
)


@dataclass(frozen=True)
class Emulator:
    name: str
    host: str  # "127.0.0.1:PORT"
    project: str
    started_in: float  # seconds from launch to the first "Ok"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=1) as response:
            return bool(response.read().decode(errors="replace").strip() == "Ok")
    except (OSError, urllib.error.URLError):
        return False


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End the emulator's whole process group: SIGTERM, then SIGKILL if anything lingers."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        if _group_gone(proc, grace):
            break
    proc.poll()


def _group_gone(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()  # reap the wrapper, whose zombie would keep the group alive
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _wait_until_up(name: str, proc: subprocess.Popen[bytes], host: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if _answers(host):
            return
        if proc.poll() is not None:
            pytest.fail(
                f"the {name} emulator exited with code {proc.returncode} before answering on "
                f"{host}; {INSTALL_HINT}\n--- {log} ---\n{_log_tail(log)}",
                pytrace=False,
            )
        time.sleep(0.2)
    pytest.fail(
        f"the {name} emulator did not answer on {host} within {START_TIMEOUT:g}s; "
        f"{INSTALL_HINT}\n--- {log} ---\n{_log_tail(log)}",
        pytrace=False,
    )


def _run_emulator(name: str, args: list[str], tmp: Path) -> Iterator[Emulator]:
    missing = [tool for tool in ("gcloud", "java") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found on PATH: {INSTALL_HINT}", pytrace=False)
    host = f"127.0.0.1:{_free_port()}"
    log = tmp / f"{name}.log"
    command = ["gcloud", *args, f"--host-port={host}", "--quiet"]
    started = time.monotonic()
    # Under archdeploy's supervisor (as `archdeploy dev` runs them): if pytest is killed,
    # even by SIGKILL, the emulator and its JVM end with it.
    proc = launch(f"{name} emulator", command, env=os.environ, cwd=tmp, log_path=log).process
    try:
        _wait_until_up(name, proc, host, log)
        yield Emulator(name, host, PROJECT, round(time.monotonic() - started, 1))
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[Emulator]:
    with tempfile.TemporaryDirectory(prefix="archdeploy-pubsub-") as tmp:
        args = ["beta", "emulators", "pubsub", "start", f"--project={PROJECT}"]
        yield from _run_emulator("pubsub", [*args, f"--data-dir={tmp}"], Path(tmp))


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[Emulator]:
    with tempfile.TemporaryDirectory(prefix="archdeploy-firestore-") as tmp:
        args = ["emulators", "firestore", "start", "--database-mode=firestore-native"]
        yield from _run_emulator("firestore", args, Path(tmp))


@pytest.fixture
def pubsub_env(pubsub_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """Point Pub/Sub clients created during this test at the emulator."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    return pubsub_emulator


@pytest.fixture
def firestore_env(firestore_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """Point Firestore clients created during this test at the emulator."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    return firestore_emulator


@pytest.fixture(scope="session")
def firestore_client(firestore_emulator: Emulator) -> Iterator[Any]:
    """One Firestore client on the emulator for the session (it reads the host only here)."""
    from google.cloud import firestore

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
        client = firestore.Client(project=firestore_emulator.project)
    yield client
    client.close()
