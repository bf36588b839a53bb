"""The one place that picks adapters from settings and hands them to the handlers."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from shared.adapters.inprocess_bus import InProcessBus
from shared.deployer import ContainerDeployer
from shared.entrypoints import subscribe_all
from shared.errors import UsageError
from shared.handlers import Runtime, dispatch_request
from shared.messages import DeployRequest, RunRecord, RunResult
from shared.ports import MessageBus, RunStore
from shared.settings import Settings
from shared.state import assemble_result

log = logging.getLogger(__name__)

BUSES = ("inprocess", "pubsub")
STORES = ("sqlite", "firestore")
DEPLOYERS = ("local", "gcp")


def make_store(settings: Settings) -> RunStore:
    kind = settings.store_kind
    if kind == "sqlite":
        from shared.adapters.sqlite_store import SqliteRunStore

        return SqliteRunStore(settings.state_dir / "runs.db")
    if kind == "firestore":
        from shared.adapters.firestore_store import FirestoreRunStore

        return FirestoreRunStore(
            project_id=settings.project,
            database=settings.firestore_database,
            collection=settings.firestore_collection,
        )
    raise UsageError(f"unknown store {kind!r}: choose one of {', '.join(STORES)}")


def make_bus(settings: Settings) -> MessageBus:
    kind = settings.bus_kind
    if kind == "inprocess":
        return InProcessBus(parallelism=settings.parallelism)
    if kind == "pubsub":
        from shared.adapters.pubsub_bus import PubSubBus

        return PubSubBus(settings.project, settings.topics)
    raise UsageError(f"unknown bus {kind!r}: choose one of {', '.join(BUSES)}")


def make_deployer(settings: Settings) -> ContainerDeployer:
    kind = settings.deployer_kind
    if kind == "local":
        from shared.adapters.local_deployer import LocalDeployer

        return LocalDeployer(settings.state_dir, health_timeout=settings.health_timeout_seconds)
    if kind == "gcp":
        from shared.adapters.gcp_deployer import GcpDeployer

        return GcpDeployer(
            settings.project,
            settings.region,
            source_bucket=settings.source_bucket,
            image_repo=settings.image_repo,
            build_timeout=settings.build_timeout_seconds,
            deploy_timeout=settings.deploy_timeout_seconds,
        )
    raise UsageError(f"unknown deployer {kind!r}: choose one of {', '.join(DEPLOYERS)}")


def runtime(settings: Settings, *, with_deployer: bool = False) -> Runtime:
    """What one function needs: the dispatcher and aggregator run no deployer."""
    deployer = make_deployer(settings) if with_deployer else None
    return Runtime(
        store=make_store(settings),
        bus=make_bus(settings),
        deployer=deployer,
        async_builds=settings.deployer_kind == "gcp" and settings.async_builds,
    )


@dataclass
class Embedded:
    """The whole system in one process: dispatcher, workers and aggregator on one bus."""

    rt: Runtime
    bus: InProcessBus
    started: dict[str, float] = field(default_factory=dict)

    @property
    def store(self) -> RunStore:
        return self.rt.store

    def submit(self, request: DeployRequest, *, record_invalid: bool = False) -> RunRecord:
        run = dispatch_request(request, self.rt, record_invalid=record_invalid)
        self.started[run.run_id] = time.monotonic()
        return run

    def wait(self, run_id: str, *, timeout: float | None = None) -> RunResult:
        """Block until the run has a final result, re-raising any handler that gave up."""
        self.bus.drain(timeout)
        result = self.store.get_result(run_id)
        if result is None:
            run = self.store.get_run(run_id)
            if run is None:
                raise UsageError(f"run {run_id} vanished from the store")
            return assemble_result(run, self.store.get_tasks(run_id))
        return result

    def close(self) -> None:
        self.bus.close()
        close = getattr(self.store, "close", None)
        if close is not None:
            close()


def embedded(
    settings: Settings,
    *,
    deployer: ContainerDeployer | None = None,
    store: RunStore | None = None,
    clock: object | None = None,
) -> Embedded:
    """Wire the embedded system; tests pass fakes for `deployer` and `store`."""
    bus = InProcessBus(parallelism=settings.parallelism)
    rt = Runtime(
        store=store or make_store(settings),
        bus=bus,
        deployer=deployer or make_deployer(settings),
    )
    if callable(clock):
        rt.clock = clock  # type: ignore[assignment]
    subscribe_all(bus, rt)
    return Embedded(rt=rt, bus=bus)
