"""A release-ready system of fakes (store, bus, FakeDeployer as a TrafficDeployer) with
the real check runner, and architectures whose checks are small Python commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from shared.adapters.checks import HttpAndCommandChecks
from shared.architecture.model import Architecture
from shared.core.dispatcher import dispatch_request
from shared.core.handlers import subscribe_all
from shared.core.runtime import Runtime
from shared.messages import DeployRequest, Phase, RunResult
from tests.builders import architecture, service
from tests.fakes import FakeBus, FakeDeployer, FakeRunStore


class ReleaseSystem:
    def __init__(self, deployer: FakeDeployer | None = None) -> None:
        self.store = FakeRunStore()
        self.bus = FakeBus()
        self.deployer = deployer or FakeDeployer()
        self.rt = Runtime(
            store=self.store, bus=self.bus, deployer=self.deployer, checks=HttpAndCommandChecks()
        )
        subscribe_all(self.bus, self.rt)

    def run(self, arch: Architecture | None = None, **request: Any) -> RunResult:
        text = {"architecture": arch.model_dump_json()} if arch is not None else {}
        run = dispatch_request(DeployRequest(**text, **request), self.rt)
        self.bus.deliver_all()
        result = self.store.get_result(run.run_id)
        assert result is not None, "the run never finished"
        return result

    def traffic(self) -> dict[str, dict[str, int]]:
        return {name: dict(p) for name, p in self.deployer.percents.items()}

    def moved_at(self, service: str, revision: str, percent: int = 100) -> float:
        """When `revision` first took `percent` of the service's traffic."""
        return next(
            t
            for name, percents, t in self.deployer.traffic_log
            if name == service and percents.get(revision) == percent
        )

    def tasks(self, run_id: str, phase: Phase) -> dict[str, Any]:
        return {t.service: t for t in self.store.get_tasks(run_id, phase)}


def command(code: str) -> dict[str, Any]:
    """A command check running `code` in Python, TARGET_URL in its environment."""
    return {"command": [sys.executable, "-c", code]}


PASS = command("import os; print('ok', os.environ['TARGET_URL'])")
FAIL = command("import sys; print('smoke failed: 503 from /orders'); sys.exit(1)")


def fail_on_call(counter: Path, call: int) -> dict[str, Any]:
    """A check that passes except on its `call`-th run (counted in a file)."""
    code = (
        "import pathlib, sys; p = pathlib.Path(sys.argv[1]);"
        "n = int(p.read_text() or 0) + 1 if p.exists() else 1; p.write_text(str(n));"
        f"print('call', n); sys.exit(1 if n == {call} else 0)"
    )
    return {"command": [sys.executable, "-c", code, str(counter)]}


def chain(
    *,
    version: str = "1",
    release: dict[str, Any] | None = None,
    api_checks: list[dict[str, Any]] | None = None,
    web_checks: list[dict[str, Any]] | None = None,
    web_health: str | None = None,
) -> Architecture:
    """`web` depends on `api`; `jobs` stands alone and never changes."""
    root: dict[str, Any] = {"release": release} if release else {}
    env = {"VERSION": version}
    web = service("web", "api", environment_vars=env, verify=web_checks or [])
    if web_health:
        web["health_check"] = {"path": web_health}
    return architecture(
        {
            "flow": [
                service("api", environment_vars=env, verify=api_checks or []),
                web,
                service("jobs"),
            ]
        },
        director=False,
        **root,
    )
