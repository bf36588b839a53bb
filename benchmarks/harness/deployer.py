"""A container deployer whose builds and deploys take a configured time, and say when.

`sleep` tasks wait (an external build service would); `busy` tasks burn CPU in Python
(they hold the GIL, so they also measure how the core shares the interpreter).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from benchmarks.harness.workload import Mode
from shared.architecture.model import DeploymentSpec
from shared.deployer import Target, build_then_deploy, current_target


@dataclass(frozen=True)
class TaskSpan:
    key: str  # phase:service
    task_id: str
    started: float  # time.time()
    finished: float


class BenchDeployer:
    """`ContainerDeployer` with per-task durations keyed `phase:service`."""

    def __init__(
        self, seconds: Mapping[str, float], mode: Mode = "sleep", default: float = 0.0
    ) -> None:
        self.seconds = dict(seconds)
        self.mode = mode
        self.default = default  # for tasks not in `seconds`
        self._lock = threading.Lock()
        self.spans: list[TaskSpan] = []

    def build(
        self, service_name: str, spec: DeploymentSpec, *, target: Target | None = None
    ) -> str:
        self._work("build", service_name, target or current_target())
        return f"bench.registry/{service_name}@sha256:{'0' * 64}"

    def deploy_service(
        self,
        service_name: str,
        service_account_email: str,
        spec: DeploymentSpec,
        *,
        target: Target | None = None,
    ) -> str:
        target = target or current_target()
        self._work(_phase(target, "deploy"), service_name, target)
        return f"https://{service_name}.bench.run"

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
        return None

    def _work(self, phase: str, service: str, target: Target | None) -> None:
        key = f"{phase}:{service}"
        started = time.time()
        spend(self.seconds.get(key, self.default), self.mode)
        span = TaskSpan(key, target.task_id if target else "", started, time.time())
        with self._lock:
            self.spans.append(span)


def spend(seconds: float, mode: Mode) -> None:
    """Take `seconds`: asleep, or busy in the interpreter."""
    if seconds <= 0:
        return
    if mode == "sleep":
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(200))


def _phase(target: Target | None, default: str) -> str:
    """The task's phase from its id (`run:phase:service`): the director deploys too."""
    if target is None or target.task_id.count(":") < 2:
        return default
    return target.task_id.split(":")[-2]
