"""The serverless topology on one machine: emulators, push subscriptions, three functions.

    with DevTopology(state_dir=Path(".archdeploy/dev")) as topo:
        topo.http_url          # POST a DeployRequest here, GET /runs/RUN_ID
        topo.store()           # a FirestoreRunStore on the emulator, to read runs

What runs, each in its own process group (so stopping it ends everything it started):

- the Pub/Sub and Firestore emulators, on free loopback ports;
- `functions-framework` five times: `dispatch` (CloudEvent, fed by the requests topic),
  `dispatch_http` (HTTP), `run_task` (CloudEvent, tasks), `aggregate` (CloudEvent,
  completions) and `sweep` (HTTP, called every minute as Cloud Scheduler does), with the
  Pub/Sub bus, the Firestore store and the local deployer; every worker shares one state
  directory, so what one builds another can deploy.

Push endpoints have the form `http://127.0.0.1:PORT/projects/PROJECT/topics/TOPIC`, from
which functions-framework builds the CloudEvent's `source`, as Eventarc would. As in
terraform/pubsub.tf, each push subscription (`archdeploy-dispatcher`, `archdeploy-worker`,
`archdeploy-aggregator`) has a dead-letter topic `<subscription>-dead-letter` with a pull
subscription of the same name that keeps what lands there. Seen on the emulator: it
honours the dead-letter policy (after 5 failed pushes the message moves there, with the
`CloudPubSubDeadLetterSource*` attributes); of the retry policy (1 s to 10 s here, 10 s to
600 s in terraform) it honours the minimum backoff for the first redelivery, then
redelivers about every 3 s instead of backing off exponentially.

`stop()` ends the functions, then every service the worker deployed (their records in
the state directory, and any stray process still running from its `run/` directory),
then the emulators.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from shared.adapters.local.processes import free_port, processes_in, start_time, stop_group
from shared.devserver.emulators import (
    Child,
    DeliveryPolicy,
    PushRoute,
    Ticker,
    create_topology,
    emulator_command,
    emulator_env,
    emulator_ready,
    launch,
    wait_ready,
)
from shared.devserver.leftovers import Started, forget, record, stop_leftovers
from shared.errors import UsageError
from shared.settings import load_settings

if TYPE_CHECKING:
    from shared.adapters.gcp.firestore_store import FirestoreRunStore

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROJECT = "archdeploy-dev"


@dataclass(frozen=True)
class Function:
    name: str  # the process's name, its log files' stem and its key in `urls`
    source: str  # the function's directory under functions/
    target: str
    signature: str  # "cloudevent" or "http"
    topic: str | None = None  # the logical topic whose push subscription feeds it


FUNCTIONS = (
    Function("dispatcher", "dispatcher", "dispatch", "cloudevent", "requests"),
    Function("dispatcher-http", "dispatcher", "dispatch_http", "http"),
    Function("worker", "worker", "run_task", "cloudevent", "tasks"),
    Function("aggregator", "aggregator", "aggregate", "cloudevent", "completions"),
    Function("sweep", "aggregator", "sweep", "http"),  # called every `sweep_interval` s
    Function("webhook", "dispatcher", "webhook", "http"),  # GitHub push deliveries
)
TOKEN_FILE = "http-token"  # `up --endpoint` reads the token here (0600)


@dataclass
class DevTopology:
    """Start with `start()` (or `with`), stop with `stop()`; safe to stop twice."""

    state_dir: Path
    project: str = DEFAULT_PROJECT
    logs_dir: Path | None = None  # default: state_dir/logs
    extra_env: dict[str, str] = field(default_factory=dict)  # for every function
    functions_root: Path = REPO_ROOT
    python: str = sys.executable
    policy: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    sweep_interval: float | None = 60.0  # seconds, as terraform's scheduler; None: never
    # The HTTP door's bearer token and the webhook's secret: from the environment
    # (ARCHDEPLOY_HTTP_TOKEN, ARCHDEPLOY_WEBHOOK_SECRET), else generated for this run.
    http_token: str = ""
    webhook_secret: str = ""
    source_base: Path | None = None  # a local source_root must be inside; default: cwd
    generated: tuple[str, ...] = field(default=(), init=False)  # which were generated
    stopped_leftovers: list[str] = field(default_factory=list, init=False)
    urls: dict[str, str] = field(default_factory=dict, init=False)
    pubsub_host: str = field(default="", init=False)
    firestore_host: str = field(default="", init=False)
    _children: list[Child] = field(default_factory=list, init=False, repr=False)
    _temp_dirs: list[Path] = field(default_factory=list, init=False, repr=False)
    _store: FirestoreRunStore | None = field(default=None, init=False, repr=False)
    _ticker: Ticker | None = field(default=None, init=False, repr=False)
    _client: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).absolute()
        self.logs_dir = Path(self.logs_dir or self.state_dir / "logs").absolute()
        self.settings = load_settings(
            project=self.project, bus="pubsub", store="firestore", deployer="local"
        )
        self.topics = self.settings.topics
        self.source_base = Path(self.source_base or Path.cwd()).resolve()
        generated = []
        for name, variable in (("http_token", "HTTP_TOKEN"), ("webhook_secret", "WEBHOOK_SECRET")):
            if not getattr(self, name):
                value = os.environ.get(f"ARCHDEPLOY_{variable}")
                if not value:
                    value = secrets.token_urlsafe(24)
                    generated.append(name)
                setattr(self, name, value)
        self.generated = tuple(generated)

    @property
    def token_path(self) -> Path:
        return self.state_dir / TOKEN_FILE

    @property
    def http_url(self) -> str:
        """The dispatcher's HTTP function: POST a DeployRequest, GET /runs/RUN_ID."""
        return self.urls["dispatcher-http"]

    def log_path(self, name: str) -> Path:
        """Where function `name` writes its JSON log lines (stdout); stderr goes to .err."""
        assert self.logs_dir is not None
        return self.logs_dir / f"{name}.log"

    def start(self) -> DevTopology:
        """Start everything; on any failure stop what started, and raise UsageError."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the functions, the services the worker deployed, then the emulators."""
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker = None
        functions = [c for c in self._children if not c.name.endswith("-emulator")]
        emulators = [c for c in self._children if c.name.endswith("-emulator")]
        # Each step runs even if one before it fails: the emulators must never outlive us.
        try:
            _stop_all(functions)
            self._teardown_services()
            if self._client is not None:
                self._client.close()
                self._client = self._store = None
        finally:
            _stop_all(emulators)
        self._children.clear()
        forget(self.state_dir)
        self.token_path.unlink(missing_ok=True)
        for directory in self._temp_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        self._temp_dirs.clear()

    def process_groups(self) -> dict[str, int]:
        """Each started child's process group id (== its pid), by name."""
        return {c.name: c.process.pid for c in self._children}

    def exited(self) -> list[Child]:
        """Children that have ended on their own (the CLI stops everything then)."""
        return [c for c in self._children if c.exited() is not None]

    def store(self) -> FirestoreRunStore:
        """The run store the functions use, on the Firestore emulator; `stop()` closes it."""
        from google.cloud import firestore

        from shared.adapters.gcp.firestore_store import FirestoreRunStore

        if self._store is None:
            with emulator_env(FIRESTORE_EMULATOR_HOST=self.firestore_host):
                self._client = firestore.Client(project=self.project)
            self._store = FirestoreRunStore(
                project_id=self.project,
                collection=self.settings.firestore_collection,
                client=self._client,
            )
        return self._store

    def function_env(self) -> dict[str, str]:
        """The environment each function runs with."""
        env = dict(os.environ)
        env.update(
            ARCHDEPLOY_BUS="pubsub",
            ARCHDEPLOY_STORE="firestore",
            ARCHDEPLOY_DEPLOYER="local",
            ARCHDEPLOY_PROJECT=self.project,
            ARCHDEPLOY_STATE_DIR=str(self.state_dir),
            ARCHDEPLOY_LOG_FORMAT="json",
            PUBSUB_EMULATOR_HOST=self.pubsub_host,
            FIRESTORE_EMULATOR_HOST=self.firestore_host,
            PYTHONUNBUFFERED="1",
            ARCHDEPLOY_HTTP_TOKEN=self.http_token,
            ARCHDEPLOY_WEBHOOK_SECRET=self.webhook_secret,
            ARCHDEPLOY_HTTP_SOURCE_ROOT=str(self.source_base),
            # The emulator dead-letters after ~10 s of redeliveries: give up before.
            ARCHDEPLOY_WEBHOOK_GIVE_UP_SECONDS=os.environ.get(
                "ARCHDEPLOY_WEBHOOK_GIVE_UP_SECONDS", "5"
            ),
            THREADS=os.environ.get("THREADS", "16"),  # gunicorn's threads per function
        )
        env.update({f"ARCHDEPLOY_TOPIC_{k.upper()}": v for k, v in self.topics.items()})
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.functions_root), os.environ.get("PYTHONPATH")) if p
        )
        env.update(self.extra_env)
        return env

    def __enter__(self) -> DevTopology:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- starting -----------------------------------------------------------------------

    def _start(self) -> None:
        assert self.logs_dir is not None
        if not (self.functions_root / "functions").is_dir():
            raise UsageError(
                f"no functions/ directory in {self.functions_root}: run archdeploy dev from a "
                "checkout of archdeploy (pip install -e .), or pass functions_root"
            )
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.stopped_leftovers = stop_leftovers(self.state_dir)
        self._teardown_services()  # what a dead dev's worker deployed, if any
        _write_secret(self.token_path, self.http_token)
        self.pubsub_host = f"127.0.0.1:{free_port()}"
        self.firestore_host = f"127.0.0.1:{free_port()}"
        # Functions connect to the emulators only on first use: start all at once.
        waits = [self._start_emulator("pubsub"), self._start_emulator("firestore")]
        waits += [self._start_function(f) for f in FUNCTIONS]
        with ThreadPoolExecutor(len(waits)) as pool:
            for done in [pool.submit(wait) for wait in waits]:
                done.result()
        routes = [self._route(f) for f in FUNCTIONS if f.topic]
        create_topology(
            self.pubsub_host, self.project, list(self.topics.values()), routes, self.policy
        )
        if self.sweep_interval:
            self._ticker = Ticker(self.urls["sweep"], self.sweep_interval)
            self._ticker.start()
        log.info("dev topology up: %s", self.urls)

    def _start_emulator(self, kind: str) -> _Wait:
        host = self.pubsub_host if kind == "pubsub" else self.firestore_host
        data_dir = self.state_dir / f"{kind}-emulator"
        data_dir.mkdir(parents=True, exist_ok=True)
        command = emulator_command(kind, host, self.project, data_dir)
        child = self._launch(f"{kind}-emulator", command, err_path=None)
        return _Wait(child, f"http://{host}/", emulator_ready)

    def _start_function(self, function: Function) -> _Wait:
        port = free_port()
        source = self.functions_root / "functions" / function.source / "main.py"
        command = [self.python, "-m", "functions_framework", "--target", function.target]
        command += ["--signature-type", function.signature, "--source", str(source)]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        self.urls[function.name] = f"http://127.0.0.1:{port}"
        err_path = self.log_path(function.name).with_suffix(".err")
        child = self._launch(function.name, command, err_path=err_path)
        return _Wait(child, f"http://127.0.0.1:{port}/")

    def _launch(self, name: str, command: list[str], *, err_path: Path | None) -> Child:
        env = dict(os.environ)
        if err_path:  # a function
            env = self.function_env()
            # gunicorn puts its control socket in $XDG_RUNTIME_DIR, else ~/.gunicorn/ shared
            # by every gunicorn of the user: give each function its own (short: a socket path).
            env["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix=f"archdeploy-{name}-")
            self._temp_dirs.append(Path(env["XDG_RUNTIME_DIR"]))
        child = launch(
            name,
            command,
            env=env,
            cwd=self.functions_root,
            log_path=self.log_path(name),
            err_path=err_path,
        )
        self._children.append(child)
        record(
            self.state_dir, [Started(c.name, c.process.pid, _started(c)) for c in self._children]
        )
        return child

    def _route(self, function: Function) -> PushRoute:
        assert function.topic is not None
        topic_id = self.topics[function.topic]
        endpoint = f"{self.urls[function.name]}/projects/{self.project}/topics/{topic_id}"
        # Named as terraform names the functions' subscriptions.
        return PushRoute(f"archdeploy-{function.name}", topic_id, endpoint)

    # --- stopping -----------------------------------------------------------------------

    def _teardown_services(self) -> None:
        from shared.adapters.local.deployer import LocalDeployer

        run_dir = self.state_dir / "run"
        if not run_dir.is_dir():
            return
        LocalDeployer(self.state_dir).teardown_all()
        # A service whose worker was stopped mid-deploy was never recorded: find it by cwd.
        for pid in processes_in(run_dir):
            try:
                pgid = os.getpgid(pid)
            except ProcessLookupError:
                continue
            log.warning("stopping unrecorded service process %d", pid)
            stop_group(pid, pgid, start_time(pid))


def _started(child: Child) -> int:
    return start_time(child.process.pid) or 0


def _write_secret(path: Path, value: str) -> None:
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(value + "\n")


def _any_answer(body: bytes) -> bool:
    return True


@dataclass(frozen=True)
class _Wait:
    child: Child
    url: str
    ready: Callable[[bytes], bool] = _any_answer

    def __call__(self) -> None:
        wait_ready(self.child, self.url, self.ready)


def _stop_all(children: list[Child]) -> None:
    if children:
        with ThreadPoolExecutor(len(children)) as pool:
            list(pool.map(Child.stop, children))
