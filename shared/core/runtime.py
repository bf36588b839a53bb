"""What the handlers are given: the ports, the run policy, and this process's coalescing.

`shared.bootstrap` builds one `Runtime` from settings; tests build their own with fakes.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime

from shared.core.state import assemble_result
from shared.deployer import ContainerDeployer
from shared.messages import Phase, RunResult, utcnow
from shared.ports import (
    ArchitectureReader,
    BuildSlots,
    CheckRunner,
    MessageBus,
    RunStore,
    SourceProvider,
)

# How long a worker's claim holds before another may take the task over (a crashed
# worker's task is reclaimed after this), and how long a task may run before the sweep
# fails it as timed out. Builds are long; deploys wait for a health check.
DEFAULT_LEASES = {
    Phase.BUILD: 1800.0,
    Phase.DIRECTOR: 900.0,
    Phase.DEPLOY: 900.0,
    Phase.ROLLBACK: 900.0,
    Phase.STAGE: 900.0,
    Phase.VERIFY: 900.0,
    Phase.PROMOTE: 1800.0,  # steps wait out their soak
    Phase.REVERT: 900.0,
}
DEFAULT_DEADLINES = {
    Phase.BUILD: 3600.0,
    Phase.DIRECTOR: 1200.0,
    Phase.DEPLOY: 1200.0,
    Phase.ROLLBACK: 1200.0,
    Phase.STAGE: 1200.0,
    Phase.VERIFY: 1200.0,
    Phase.PROMOTE: 3600.0,
    Phase.REVERT: 1200.0,
}


@dataclass(frozen=True)
class Driver:
    """The process that drives a run in embedded mode: its tasks run there and nowhere
    else, and once it is gone the run is abandoned (see `shared.core.control`)."""

    pid: int
    started: float  # psutil's create_time: with the pid, names one process
    host: str

    @classmethod
    def this_process(cls) -> Driver:
        import psutil

        return cls(os.getpid(), round(psutil.Process().create_time(), 2), socket.gethostname())

    def fields(self) -> dict[str, object]:
        return {"driver_pid": self.pid, "driver_started": self.started, "driver_host": self.host}


@dataclass(frozen=True)
class RunPolicy:
    """The knobs that shape a run: leases, deadlines, admission caps, build handling."""

    leases: Mapping[Phase, float] = field(default_factory=lambda: dict(DEFAULT_LEASES))
    deadlines: Mapping[Phase, float] = field(default_factory=lambda: dict(DEFAULT_DEADLINES))
    run_deadline: float = 7200.0
    republish_after: float = 120.0
    # Submit builds and let their completion arrive as a build event: a build can
    # outlast a function's 540 s timeout, so the worker must not be what waits for it.
    async_builds: bool = False
    # Admission caps per run: tasks beyond them wait in the store, released as others end.
    build_concurrency: int | None = None
    deploy_concurrency: int | None = None
    # One build cap for the project, across runs (Cloud Build's quota is the project's):
    # builds hold a slot in the store while in flight; None: no project-wide cap.
    project_build_cap: int | None = None
    cancel_builds_on_failure: bool = False


class Coalescer:
    """Runs a step for a key; while one thread runs it, callers on other threads only ask
    it to go once more. A burst of 300 completions of one run then costs a handful of
    state-machine steps, not 300; each step reads the store afresh, so none is missed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._again: dict[str, bool] = {}  # keys being run now -> asked to go again

    def run(self, key: str, step: Callable[[], None]) -> None:
        with self._lock:
            if key in self._again:
                self._again[key] = True
                return
            self._again[key] = False
        try:
            while True:
                step()
                with self._lock:
                    if not self._again[key]:
                        del self._again[key]
                        return
                    self._again[key] = False
        except BaseException:
            with self._lock:
                self._again.pop(key, None)
            raise


class RunLocks:
    """One lock per run, in this process, for admission: the aggregator's step and a worker
    handing the slot it freed over (`shared.core.handoff`) each read the room and release
    under it, so between them they never release past a cap (a count read before another
    thread's release would otherwise let both fill the same room)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # run -> (its lock, users). Re-entrant: a step that admits for the same run again
        # further down its own stack must not wait for itself.
        self._held: dict[str, tuple[threading.RLock, int]] = {}
        # Runs with no deploy left waiting. A task waits only from its plan until its
        # release, never again, so once true it stays true: a worker whose deploy ends
        # then has nothing to hand over and reads nothing (uncapped runs, the last deploys).
        self.deploys_released: set[str] = set()

    @contextmanager
    def hold(self, run_id: str) -> Iterator[None]:
        with self._lock:
            lock, users = self._held.get(run_id, (None, 0))
            lock = lock or threading.RLock()
            self._held[run_id] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                users = self._held[run_id][1] - 1
                if users:
                    self._held[run_id] = (lock, users)
                else:
                    del self._held[run_id]


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Runtime:
    """The ports the handlers use, the policy they follow, and this process's coalescing."""

    store: RunStore
    bus: MessageBus
    deployer: ContainerDeployer | None = None  # a worker's; elsewhere, only to cancel builds
    sources: SourceProvider | None = None  # fetches remote build sources for the worker
    architectures: ArchitectureReader | None = None  # reads gs:// and github:// locations
    checks: CheckRunner | None = None  # a worker's: runs a release's checks
    policy: RunPolicy = field(default_factory=RunPolicy)
    worker_id: str = field(default_factory=_default_worker_id)
    clock: Callable[[], datetime] = utcnow
    # Embedded: this process, recorded on the runs it creates; the sweep touches only
    # those, and ends as abandoned the runs whose driver is gone. None on Google Cloud.
    driver: Driver | None = None
    # Where the project build cap's slots are kept; None: in `store`.
    slots: BuildSlots | None = None
    coalescer: Coalescer = field(default_factory=Coalescer, repr=False)
    admission: RunLocks = field(default_factory=RunLocks, repr=False)
    # Every handler of this runtime's runs runs here, on this runtime (`embedded`): a
    # worker and the aggregator admit under the one `admission`, so a worker may also hand
    # a freed deploy slot over (`shared.core.handoff`). False for separate functions.
    in_process: bool = False
    # Around a build or deploy: the bus's `waiting` where its handlers run on threads
    # (the in-process bus starts threads for queued tasks only while others wait).
    waiting: Callable[[], AbstractContextManager[None]] = nullcontext


def run_view(store: RunStore, run_id: str) -> RunResult | None:
    """The final result if the run has ended, else a view assembled from its tasks."""
    final = store.get_result(run_id)
    if final is not None:
        return final
    run = store.get_run(run_id)
    return assemble_result(run, store.get_tasks(run_id)) if run else None
