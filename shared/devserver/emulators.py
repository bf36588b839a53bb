"""The parts of the local serverless topology: child processes, emulators, push subscriptions.

Every child (an emulator, a function) runs in its own process group, and stopping it
ends the whole group: killing only the `gcloud` wrapper of an emulator leaves its Java
process running. The Google clients read `PUBSUB_EMULATOR_HOST` / `FIRESTORE_EMULATOR_HOST`
only when they are constructed, so `emulator_env` sets them for that moment alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.adapters.local.processes import stop_group, tail
from shared.errors import UsageError

START_TIMEOUT = 60.0  # seconds; the emulators take 3-5 s, a cold JVM on a busy CI longer
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Run by path, isolated (-I): it imports only the standard library, whatever the cwd.
_SUPERVISOR = Path(__file__).with_name("supervise.py")
log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install the emulators: apt-get install google-cloud-cli google-cloud-cli-pubsub-emulator "
    "google-cloud-cli-firestore-emulator openjdk-17-jre-headless"
)


@dataclass
class Child:
    """A process started in its own process group, its output in `log_path`."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def exited(self) -> int | None:
        return self.process.poll()

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM the whole group, SIGKILL what is left after `grace`, and reap the leader."""
        stop_group(self.process.pid, self.process.pid, None, grace=grace)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace)

    def output(self, lines: int = 30) -> str:
        return tail(self.log_path, lines=lines)


def launch(
    name: str,
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    err_path: Path | None = None,
) -> Child:
    """Start `command` in a new session; stderr goes to `err_path` if given, else the log.

    It runs under `supervise.py`, so if this process dies, even by SIGKILL, the whole
    group ends: grandchildren such as an emulator's JVM included."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as files:
        out = files.enter_context(log_path.open("ab"))
        err = files.enter_context(err_path.open("ab")) if err_path else subprocess.STDOUT
        process = subprocess.Popen(
            [sys.executable, "-I", str(_SUPERVISOR), *command],
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
    return Child(name, process, err_path or log_path)


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, a child gets SIGTERM when `dev` dies, even by SIGKILL (prctl
    PR_SET_PDEATHSIG). It reaches the child itself only, which is why that child is the
    group's supervisor (`shared/devserver/supervise.py`)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not after

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return set_death_signal


def answers(url: str, timeout: float = 1.0) -> bytes | None:
    """The body `url` answers (any HTTP status), or None when nothing listens."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return bytes(exc.read())
    except OSError:
        return None


def wait_ready(
    child: Child,
    url: str,
    ready: Callable[[bytes], bool] = lambda body: True,
    *,
    timeout: float = START_TIMEOUT,
    hint: str = "",
) -> None:
    """Poll `url` until its answer is `ready`; raises UsageError with the child's output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = answers(url)
        if body is not None and ready(body):
            return
        if child.exited() is not None:
            why = f"exited with code {child.process.returncode} before answering on {url}"
            raise UsageError(
                f"{child.name} {why}{hint}\n--- {child.log_path} ---\n{child.output()}"
            )
        time.sleep(0.1)
    raise UsageError(
        f"{child.name} did not answer on {url} within {timeout:g}s{hint}\n"
        f"--- {child.log_path} ---\n{child.output()}"
    )


def emulator_command(kind: str, host: str, project: str, data_dir: Path) -> list[str]:
    """The `gcloud` command line that starts the `kind` ("pubsub"/"firestore") emulator."""
    missing = [tool for tool in ("gcloud", "java") if shutil.which(tool) is None]
    if missing:
        raise UsageError(f"{' and '.join(missing)} not found on PATH: {INSTALL_HINT}")
    if kind == "pubsub":
        args = ["beta", "emulators", "pubsub", "start", f"--project={project}"]
        args.append(f"--data-dir={data_dir}")
    elif kind == "firestore":
        args = ["emulators", "firestore", "start", "--database-mode=firestore-native"]
    else:
        raise UsageError(f"unknown emulator {kind!r}: choose pubsub or firestore")
    return ["gcloud", *args, f"--host-port={host}", "--quiet"]


def emulator_ready(body: bytes) -> bool:
    return body.decode(errors="replace").strip() == "Ok"


@contextlib.contextmanager
def emulator_env(**hosts: str) -> Iterator[None]:
    """Set e.g. PUBSUB_EMULATOR_HOST while a client is constructed, then restore it."""
    saved = {name: os.environ.get(name) for name in hosts}
    os.environ.update(hosts)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Ticker:
    """GETs `url` every `interval` seconds on a daemon thread, as Cloud Scheduler would."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="archdeploy-ticker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            if answers(self.url, timeout=self.interval) is None:
                log.warning("nothing answered on %s", self.url)


@dataclass(frozen=True)
class PushRoute:
    """A push subscription: messages on `topic_id` are POSTed to `endpoint`."""

    subscription_id: str
    topic_id: str
    endpoint: str

    @property
    def dead_letter_id(self) -> str:
        """Its dead-letter topic, and the pull subscription that keeps what lands there."""
        return f"{self.subscription_id}-dead-letter"


@dataclass(frozen=True)
class DeliveryPolicy:
    max_delivery_attempts: int = 5
    min_backoff_seconds: int = 1
    max_backoff_seconds: int = 10
    ack_deadline_seconds: int = 600  # for push: how long Pub/Sub waits for the answer


def create_topology(
    host: str,
    project: str,
    topic_ids: Sequence[str],
    routes: Sequence[PushRoute],
    policy: DeliveryPolicy,
) -> None:
    """Create the topics and, as terraform/pubsub.tf does, per push subscription a
    dead-letter topic with a pull subscription (a topic without one drops what it gets).
    Safe to call again."""
    from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

    with emulator_env(PUBSUB_EMULATOR_HOST=host):
        publisher = PublisherClient()
        subscriber = SubscriberClient()
    try:
        for topic_id in [*topic_ids, *(r.dead_letter_id for r in routes)]:
            _ensure(publisher.create_topic, {"name": publisher.topic_path(project, topic_id)})
        for route in routes:
            dead_letters = {
                "name": subscriber.subscription_path(project, route.dead_letter_id),
                "topic": publisher.topic_path(project, route.dead_letter_id),
            }
            _ensure(subscriber.create_subscription, dead_letters)
            push = _push_request(publisher, project, route, policy)
            _ensure(subscriber.create_subscription, push)
    finally:
        subscriber.close()
        publisher.transport.close()


def _push_request(
    publisher: Any, project: str, route: PushRoute, policy: DeliveryPolicy
) -> dict[str, Any]:
    return {
        "name": f"projects/{project}/subscriptions/{route.subscription_id}",
        "topic": publisher.topic_path(project, route.topic_id),
        "push_config": {"push_endpoint": route.endpoint},
        "ack_deadline_seconds": policy.ack_deadline_seconds,
        "dead_letter_policy": {
            "dead_letter_topic": publisher.topic_path(project, route.dead_letter_id),
            "max_delivery_attempts": policy.max_delivery_attempts,
        },
        "retry_policy": {
            "minimum_backoff": {"seconds": policy.min_backoff_seconds},
            "maximum_backoff": {"seconds": policy.max_backoff_seconds},
        },
    }


def _ensure(create: Callable[..., Any], request: dict[str, Any]) -> None:
    from google.api_core import exceptions as gexc

    with contextlib.suppress(gexc.AlreadyExists):
        create(request=request)
