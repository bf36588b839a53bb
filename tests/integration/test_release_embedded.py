"""Releases through the embedded system: SQLite store, the in-process bus's threads, the
real check runner, FakeDeployer's revisions and traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.architecture.model import Architecture
from shared.bootstrap import Embedded, embedded
from shared.messages import DeployRequest, Phase, RunResult, RunStatus
from shared.settings import Settings
from tests.fakes import FakeDeployer
from tests.release_system import FAIL, PASS, chain


class Local:
    def __init__(self, tmp: Path) -> None:
        self.deployer = FakeDeployer()
        self.system: Embedded = embedded(Settings(state_dir=tmp), deployer=self.deployer)

    def run(self, arch: Architecture | None = None, **request: Any) -> RunResult:
        text = {"architecture": arch.model_dump_json()} if arch is not None else {}
        run = self.system.submit(DeployRequest(**text, **request))
        return self.system.wait(run.run_id, timeout=60)

    def traffic(self) -> dict[str, dict[str, int]]:
        return {name: dict(p) for name, p in self.deployer.percents.items()}

    def first_time(self, service: str, revision: str, percent: int) -> float:
        """When `revision` first took `percent` of the service's traffic."""
        log = self.deployer.traffic_log
        return next(t for s, p, t in log if s == service and p.get(revision) == percent)

    def last_time(self, service: str, percents: dict[str, int]) -> float:
        return max(t for s, p, t in self.deployer.traffic_log if s == service and p == percents)


def test_a_failing_check_leaves_the_previous_traffic_and_names_the_output(tmp_path: Path) -> None:
    local = Local(tmp_path)
    try:
        assert local.run(chain()).status is RunStatus.SUCCEEDED
        before = local.traffic()

        result = local.run(chain(version="2", web_checks=[FAIL]), release=True)

        assert result.status is RunStatus.FAILED
        assert local.traffic() == before
        assert any(
            e.phase is Phase.VERIFY and "smoke failed: 503" in e.error for e in result.errors
        )
        assert result.services["web"].checks[0].passed is False  # stored through SQLite
    finally:
        local.system.close()


def test_promotion_dependencies_first_then_rollback_of_that_run(tmp_path: Path) -> None:
    local = Local(tmp_path)
    try:
        local.run(chain())
        before = local.traffic()
        steps = {"strategy": "steps", "steps": [25, 100], "soak": "10ms"}
        arch = chain(version="2", release=steps, api_checks=[PASS], web_checks=[PASS])

        promoted = local.run(arch)

        assert promoted.status is RunStatus.SUCCEEDED, promoted.errors
        api, web = (promoted.services[s].staged_revision or "" for s in ("api", "web"))
        assert local.first_time("api", api, 100) < local.first_time("web", web, 25)
        assert local.traffic()["api"] == {api: 100} and local.traffic()["web"] == {web: 100}

        back = local.run(rollback_of=promoted.run_id)

        assert back.status is RunStatus.SUCCEEDED, back.errors
        assert local.traffic() == before
        # Dependents first: web is back before api is.
        assert local.last_time("web", before["web"]) < local.last_time("api", before["api"])
    finally:
        local.system.close()
