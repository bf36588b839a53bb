"""The one place that picks adapters from settings and hands them to the handlers."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared.adapters.checks import HttpAndCommandChecks
from shared.adapters.local.inprocess_bus import InProcessBus
from shared.core.control import sweep
from shared.core.dispatcher import dispatch_request
from shared.core.handlers import subscribe_all
from shared.core.runtime import DEFAULT_DEADLINES, Driver, RunPolicy, Runtime
from shared.core.state import assemble_result
from shared.deployer import ContainerDeployer
from shared.errors import UsageError
from shared.locations import GITHUB, GS, ArchitecturesByScheme
from shared.logs import configure
from shared.messages import DeployRequest, Phase, RunRecord, RunResult
from shared.ports import (
    ArchitectureReader,
    BuildSlots,
    CheckRunner,
    MessageBus,
    RunStore,
    SourceProvider,
)
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.adapters.github_source import GitHubClient

log = logging.getLogger(__name__)

BUSES = ("inprocess", "pubsub")
STORES = ("sqlite", "firestore")
DEPLOYERS = ("local", "gcp")


def make_store(settings: Settings) -> RunStore:
    kind = settings.store_kind
    if kind == "sqlite":
        from shared.adapters.local.sqlite_store import SqliteRunStore

        return SqliteRunStore(settings.state_dir / "runs.db")
    if kind == "firestore":
        from shared.adapters.gcp.firestore_store import FirestoreRunStore

        return FirestoreRunStore(
            project_id=settings.project,
            database=settings.firestore_database,
            collection=settings.firestore_collection,
        )
    raise UsageError(f"unknown store {kind!r}: choose one of {', '.join(STORES)}")


def memory_store() -> RunStore:
    """A store that lives as long as the process (and goes with it): the manager's default."""
    from shared.adapters.local.sqlite_store import SqliteRunStore

    return SqliteRunStore(":memory:")


def make_bus(settings: Settings) -> MessageBus:
    kind = settings.bus_kind
    if kind == "inprocess":
        return InProcessBus(parallelism=settings.parallelism)
    if kind == "pubsub":
        from shared.adapters.gcp.pubsub_bus import PubSubBus

        return PubSubBus(settings.project, settings.topics)
    raise UsageError(f"unknown bus {kind!r}: choose one of {', '.join(BUSES)}")


def make_deployer(settings: Settings) -> ContainerDeployer:
    kind = settings.deployer_kind
    if kind == "local":
        from shared.adapters.local.deployer import LocalDeployer

        return LocalDeployer(settings.state_dir, health_timeout=settings.health_timeout_seconds)
    if kind == "gcp":
        from shared.adapters.gcp.deployer import GcpDeployer

        return GcpDeployer(
            settings.project,
            settings.region,
            source_bucket=settings.source_bucket,
            image_repo=settings.image_repo,
            default_service_account=settings.default_service_account,
            build_service_account=settings.build_service_account,
            build_timeout=settings.build_timeout_seconds,
            deploy_timeout=settings.deploy_timeout_seconds,
        )
    raise UsageError(f"unknown deployer {kind!r}: choose one of {', '.join(DEPLOYERS)}")


def make_checks(settings: Settings) -> CheckRunner:
    """The release checks' runner: on Google Cloud, HTTP checks carry an ID token."""
    if settings.deployer_kind == "gcp":
        from shared.adapters.gcp.run_checks import CloudRunChecks

        return CloudRunChecks()
    return HttpAndCommandChecks()


def wire(settings: Settings, *, with_deployer: bool = False) -> Runtime:
    """What one function needs: the dispatcher and aggregator run no deployer.

    Architectures at `gs://` and `github://` locations are read through
    `architectures`; build sources at a GitHub commit are fetched by `sources`. On
    the in-process bus the requests topic is dispatched here too, so a request the
    webhook queues is handled without Pub/Sub.
    """
    from shared.core.handlers import on_request
    from shared.messages import TOPIC_REQUESTS

    # On Google Cloud every function cancels builds (cancel, supersede, sweep, a failed
    # build) through the deployer; constructing a `GcpDeployer` loads no SDK.
    gcp = settings.deployer_kind == "gcp"
    deployer = make_deployer(settings) if with_deployer or gcp else None
    bus = make_bus(settings)
    rt = Runtime(
        store=make_store(settings),
        bus=bus,
        deployer=deployer,
        checks=make_checks(settings) if with_deployer else None,
        sources=_github_sources(settings),
        architectures=_remote_architectures(settings),
        policy=run_policy(settings),
        # On the in-process bus this process is the only one that can run the tasks.
        driver=Driver.this_process() if isinstance(bus, InProcessBus) else None,
        # `archdeploy cancel` from another terminal frees an embedded run's slots at once.
        slots=machine_slots(settings),
    )
    if isinstance(bus, InProcessBus):
        # Not `in_process`: each function wires its own runtime, so its worker and an
        # aggregator elsewhere share no admission lock.
        rt.waiting = bus.waiting

        def dispatch(data: bytes, attributes: Mapping[str, str]) -> None:
            on_request(data, attributes, rt)

        bus.subscribe(TOPIC_REQUESTS, dispatch)
    return rt


@functools.cache
def function_settings() -> Settings:
    """A function instance's settings, read from its environment once."""
    from shared.settings import load_settings

    return load_settings()


def http_token() -> str | None:
    token = function_settings().http_token
    return token.get_secret_value() if token else None


def http_source_root() -> Path:
    """The folder a local `source_root` sent over HTTP must stay inside."""
    return function_settings().http_source_root or Path.cwd()


def http_origins() -> tuple[str, ...]:
    return tuple(function_settings().http_allowed_origins)


@functools.cache
def for_function(role: str) -> Runtime:
    """A function instance's runtime: wired once, on first use, so a cold start imports
    only what its role uses. Only the worker runs tasks with the deployer."""
    configure(json_lines=True)
    return wire(function_settings(), with_deployer=role == "worker")


def run_policy(settings: Settings) -> RunPolicy:
    """The settings that shape a run."""
    deadlines = {
        Phase.BUILD: settings.build_deadline_seconds,
        Phase.DIRECTOR: settings.deploy_deadline_seconds,
        Phase.DEPLOY: settings.deploy_deadline_seconds,
        Phase.ROLLBACK: settings.deploy_deadline_seconds,
        Phase.STAGE: settings.deploy_deadline_seconds,
        Phase.VERIFY: settings.deploy_deadline_seconds,
        Phase.PROMOTE: DEFAULT_DEADLINES[Phase.PROMOTE],  # steps wait out their soaks
        Phase.REVERT: settings.deploy_deadline_seconds,
    }
    # A claim must lapse before the deadline, so a dead worker's task is retried in time.
    leases = {phase: seconds / 2 for phase, seconds in deadlines.items()}
    # Cloud Build's quota is per project; locally the bus's thread pool is the cap.
    capped = settings.deployer_kind == "gcp"
    explicit = settings.model_fields_set
    return RunPolicy(
        deadlines=deadlines,
        leases=leases,
        run_deadline=settings.run_deadline_seconds,
        republish_after=settings.republish_after_seconds,
        async_builds=capped and settings.async_builds,
        build_concurrency=settings.build_concurrency
        if capped or "build_concurrency" in explicit
        else None,
        deploy_concurrency=settings.deploy_concurrency
        if capped or "deploy_concurrency" in explicit
        else None,
        cancel_builds_on_failure=settings.cancel_builds_on_failure,
        project_build_cap=settings.project_build_cap or None,
    )


def machine_slots(settings: Settings) -> BuildSlots | None:
    """Embedded on SQLite with a project build cap: the slots every state folder of this
    machine shares (`shared.adapters.local.build_slots`); else None (in the store)."""
    if not settings.project_build_cap or settings.store_kind != "sqlite":
        return None
    from shared.adapters.local.build_slots import MachineBuildSlots, default_slots_file

    slots = MachineBuildSlots(settings.build_slots_file or default_slots_file())
    slots.open()  # a file that cannot be opened is named now, before the run
    return slots


def _github_client(settings: Settings) -> GitHubClient:
    from shared.adapters.github_source import GitHubClient

    token = settings.github_token.get_secret_value() if settings.github_token else None
    return GitHubClient(settings.github_api_url, token)


def _github_sources(settings: Settings) -> SourceProvider:
    """Trees live under the state directory locally; on Google Cloud only /tmp is writable."""
    import tempfile
    from pathlib import Path

    from shared.adapters.github_source import GitHubSource

    local = settings.deployer_kind == "local"
    cache = settings.state_dir / "sources" if local else Path(tempfile.gettempdir()) / "archdeploy"
    return GitHubSource(_github_client(settings), cache)


def _remote_architectures(settings: Settings) -> ArchitectureReader:
    from shared.adapters.gcp.gcs_source import GcsArchitectures
    from shared.adapters.github_source import GitHubArchitectures

    return ArchitecturesByScheme(
        {
            GS: GcsArchitectures(settings.project),
            GITHUB: GitHubArchitectures(_github_client(settings)),
        }
    )


@dataclass
class Embedded:
    """The whole system in one process: dispatcher, workers and aggregator on one bus."""

    rt: Runtime
    bus: InProcessBus

    @property
    def store(self) -> RunStore:
        return self.rt.store

    def submit(self, request: DeployRequest, *, record_invalid: bool = False) -> RunRecord:
        return dispatch_request(request, self.rt, record_invalid=record_invalid)

    def wait(
        self, run_id: str, *, timeout: float | None = None, sweep_every: float = 5.0
    ) -> RunResult:
        """Block until the run has a final result, re-raising any handler that gave up.

        Every `sweep_every` seconds the deadline sweep runs, as Cloud Scheduler runs it on
        Google Cloud, so a task that hangs past its deadline cannot hang the run.
        """
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                self.bus.drain(sweep_every)
                if not self._waits_for_slots(run_id):
                    break
                # Nothing in flight here: its builds wait for slots another process
                # holds, and only a sweep notices when that process frees them.
                time.sleep(sweep_every)
            except TimeoutError:
                if self.store.get_result(run_id) is not None:
                    break
            sweep(self.rt)
            if give_up is not None and time.monotonic() > give_up:
                raise TimeoutError(f"run {run_id} still running after {timeout:g}s")
        result = self.store.get_result(run_id)
        if result is None:
            run = self.store.get_run(run_id)
            if run is None:
                raise UsageError(f"run {run_id} vanished from the store")
            return assemble_result(run, self.store.get_tasks(run_id))
        return result

    def _waits_for_slots(self, run_id: str) -> bool:
        """Whether the run, though nothing of it is in flight, waits for the project's
        build slots (under a project build cap, and not finished)."""
        if self.rt.policy.project_build_cap is None or self.store.get_result(run_id):
            return False
        run = self.store.get_run(run_id)
        return run is not None and not run.status.terminal

    def close(self) -> None:
        self.bus.close()
        for held in (self.store, self.rt.slots):
            close = getattr(held, "close", None)
            if close is not None:
                close()


def embedded(
    settings: Settings,
    *,
    deployer: ContainerDeployer | None = None,
    store: RunStore | None = None,
    clock: object | None = None,
    checks: CheckRunner | None = None,
) -> Embedded:
    """Wire the embedded system; tests pass fakes for `deployer`, `store` and `checks`."""
    bus = InProcessBus(parallelism=settings.parallelism)
    rt = Runtime(
        store=store or make_store(settings),
        bus=bus,
        deployer=deployer or make_deployer(settings),
        checks=checks or make_checks(settings),
        policy=run_policy(settings),
        driver=Driver.this_process(),
        slots=machine_slots(settings) if store is None else None,
    )
    if callable(clock):
        rt.clock = clock
    rt.waiting, rt.in_process = bus.waiting, True
    subscribe_all(bus, rt)
    return Embedded(rt=rt, bus=bus)
