"""A release killed at a canary step leaves a service split between its old revision and
a newer one that already has the wanted configuration: the next run must not call that
service unchanged (on either backend the serving record may name the newer revision)."""

from __future__ import annotations

import pytest

from shared.messages import Phase, RunStatus
from tests.release_system import FAIL, PASS, ReleaseSystem, chain


def split_halfway() -> tuple[ReleaseSystem, str, str]:
    """Version 1 serves; a release of version 2 staged api, then (as a killed promote
    leaves it) api's traffic was split 50/50 and nothing else happened."""
    system = ReleaseSystem()
    assert system.run(chain()).status is RunStatus.SUCCEEDED
    (old,) = system.traffic()["api"]
    failed = system.run(chain(version="2", api_checks=[PASS], web_checks=[FAIL]), release=True)
    new = failed.services["api"].staged_revision
    assert new is not None
    system.deployer.set_traffic("api", {old: 50, new: 50})
    assert system.deployer.deployed("api").revision == new  # type: ignore[union-attr]
    return system, old, new


@pytest.mark.parametrize("release", [True, False], ids=["release", "deploy"])
def test_a_split_left_by_a_killed_release_is_finished_by_the_next_run(release: bool) -> None:
    system, old, _ = split_halfway()

    result = system.run(chain(version="2", api_checks=[PASS], web_checks=[PASS]), release=release)

    assert result.status is RunStatus.SUCCEEDED, result.errors
    assert result.services["api"].unchanged is False
    (serving,) = system.traffic()["api"]
    assert serving != old
    phase = Phase.STAGE if release else Phase.DEPLOY
    assert not system.tasks(result.run_id, phase)["api"].reused


def test_a_service_whole_on_its_revision_is_still_unchanged() -> None:
    system = ReleaseSystem()
    assert system.run(chain()).status is RunStatus.SUCCEEDED

    result = system.run(chain(), release=True)

    assert result.services["api"].unchanged is True
