"""Releases through the core with FakeDeployer as a TrafficDeployer: stage, verify,
promote (dependencies first, in steps), revert (dependents first) and rollback."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from rich.console import Console

from shared.adapters import checks as checks_module
from shared.adapters.checks import HttpAndCommandChecks
from shared.cli.progress import result_table
from shared.cli.timeline import render_timeline
from shared.core.control import cancel_run
from shared.core.dispatcher import dispatch_request
from shared.core.release_plan import release_tag
from shared.core.rollback import last_promoted_run
from shared.doors.dashboard.view import build_view
from shared.errors import UsageError
from shared.messages import DeployRequest, Phase, RunStatus, TaskStatus, task_id_for
from tests.fakes import FakeDeployer
from tests.release_system import FAIL, PASS, ReleaseSystem, chain, fail_on_call

STEPS = {"strategy": "steps", "steps": [10, 50, 100], "soak": "0s"}


def released() -> tuple[ReleaseSystem, dict[str, dict[str, int]]]:
    """A system where version 1 serves (deployed plainly), and its traffic."""
    system = ReleaseSystem()
    first = system.run(chain())
    assert first.status is RunStatus.SUCCEEDED
    return system, system.traffic()


def test_a_failing_check_promotes_nothing_and_leaves_the_traffic_as_it_was() -> None:
    system, before = released()

    result = system.run(chain(version="2", api_checks=[PASS], web_checks=[FAIL]), release=True)

    assert result.status is RunStatus.FAILED
    assert system.traffic() == before
    (error,) = [e for e in result.errors if e.phase is Phase.VERIFY]
    assert error.service == "web" and "smoke failed: 503 from /orders" in error.error
    web = result.services["web"]
    assert web.staged_revision and web.tag_url and web.promoted_percent is None
    assert [c.passed for c in web.checks] == [False]
    # The staged revisions are kept, under the run's tag, taking no traffic.
    assert web.staged_revision in system.deployer.tags["web"].values()
    assert all(
        p.status is not TaskStatus.SUCCEEDED or p.reused
        for p in system.tasks(result.run_id, Phase.PROMOTE).values()
    )


def test_when_all_checks_pass_dependencies_take_traffic_first() -> None:
    system, before = released()

    result = system.run(chain(version="2", api_checks=[PASS], web_checks=[PASS]), release=True)

    assert result.status is RunStatus.SUCCEEDED, result.errors
    api, web = result.services["api"], result.services["web"]
    assert system.traffic()["api"] == {api.staged_revision: 100}
    assert system.traffic()["web"] == {web.staged_revision: 100}
    assert system.moved_at("api", api.staged_revision or "") < system.moved_at(
        "web", web.staged_revision or ""
    )
    assert (api.promoted_percent, web.promoted_percent) == (100, 100)
    assert api.status == web.status == "promoted" and not result.rolled_back
    assert "ok https://rel-" in api.checks[0].detail  # the check ran against the tag URL
    # Unchanged: not staged, its traffic untouched.
    assert result.services["jobs"].unchanged and system.traffic()["jobs"] == before["jobs"]


def test_the_health_check_is_the_default_check() -> None:
    system, _ = released()
    result = system.run(chain(version="2", web_health="/h"), release=True)

    # The fake's tag URLs resolve nowhere: the default HTTP check fails, naming its GET.
    assert result.status is RunStatus.FAILED
    assert "GET https://rel-" in (result.services["web"].error or "")


def test_a_canary_moves_through_its_steps_with_checks_between(tmp_path: Path) -> None:
    system, before = released()
    arch = chain(version="2", release=STEPS, api_checks=[PASS])

    result = system.run(arch)  # the file's `release:` alone opts in

    assert result.status is RunStatus.SUCCEEDED, result.errors
    new = result.services["api"].staged_revision or ""
    (old,) = before["api"]
    shares = [p for name, p, _ in system.deployer.traffic_log if name == "api" and new in p]
    assert shares == [{new: 10, old: 90}, {new: 50, old: 50}, {new: 100}]
    assert len(result.services["api"].checks) == 1  # verify's, then each step's re-run


def test_a_check_failing_mid_canary_reverts_dependents_first(tmp_path: Path) -> None:
    system, before = released()
    # web's check passes at verify and fails at its canary's first step (its 2nd run).
    arch = chain(version="2", release=STEPS, web_checks=[fail_on_call(tmp_path / "n", 2)])

    result = system.run(arch)

    assert result.status is RunStatus.FAILED
    assert system.traffic() == before
    (error,) = [e for e in result.errors if e.phase is Phase.PROMOTE]
    assert error.service == "web" and "at 10%" in error.error and "call 2" in error.error
    assert sorted(result.rolled_back) == ["api", "web"]
    reverted = {name: t for name, p, t in system.deployer.traffic_log if p == before.get(name)}
    assert reverted["web"] < reverted["api"]  # dependents leave the new revisions first


def test_rollback_puts_a_promoted_run_back_dependents_first() -> None:
    system, before = released()
    promoted = system.run(chain(version="2"), release=True)
    assert promoted.status is RunStatus.SUCCEEDED

    back = system.run(rollback_of=promoted.run_id)

    assert back.status is RunStatus.SUCCEEDED, back.errors
    assert system.traffic() == before
    assert sorted(back.rolled_back) == ["api", "web"]
    assert {n: s.status for n, s in back.services.items()} == {
        "api": "rolled back",
        "web": "rolled back",
    }
    reverted = {name: t for name, p, t in system.deployer.traffic_log if p == before.get(name)}
    assert reverted["web"] < reverted["api"]


def test_a_first_release_creates_services_and_a_failure_removes_them() -> None:
    system = ReleaseSystem()

    result = system.run(chain(web_checks=[FAIL]), release=True)

    assert result.status is RunStatus.FAILED
    assert "web" in system.deployer.torn_down and "web" not in system.traffic()


def test_a_deployer_without_traffic_cannot_release_and_nothing_is_built() -> None:
    inner = FakeDeployer()

    class Plain:  # the seed's four methods, and no traffic
        build = inner.build
        deploy_service = inner.deploy_service
        build_and_deploy = inner.build_and_deploy
        teardown = inner.teardown

    system = ReleaseSystem()
    system.rt.deployer = Plain()
    request = DeployRequest(architecture=chain().model_dump_json(), release=True)

    with pytest.raises(UsageError, match="TrafficDeployer"):
        dispatch_request(request, system.rt, record_invalid=False)
    assert inner.built == [] and system.store.runs == {}


def test_rolling_back_a_run_that_was_not_a_release_is_a_usage_error() -> None:
    system = ReleaseSystem()
    plain = system.run(chain())
    request = DeployRequest(rollback_of=plain.run_id)

    with pytest.raises(UsageError, match="is not a release"):
        dispatch_request(request, system.rt, record_invalid=False)


def test_rolling_back_a_rollback_says_so_and_how_to_serve_the_release_again() -> None:
    system = ReleaseSystem()
    system.run(chain())
    released = system.run(chain(version="2", api_checks=[PASS], web_checks=[PASS]), release=True)
    back = system.run(rollback_of=released.run_id)
    assert back.status is RunStatus.SUCCEEDED, back.errors

    with pytest.raises(UsageError, match=f"is a rollback \\(of {released.run_id}\\)"):
        dispatch_request(DeployRequest(rollback_of=back.run_id), system.rt, record_invalid=False)


def test_a_release_cancelled_mid_promote_puts_traffic_back_and_ends_cancelled() -> None:
    system, before = released()
    request = DeployRequest(architecture=chain(version="2").model_dump_json(), release=True)
    run = dispatch_request(request, system.rt)
    api_promote = task_id_for(run.run_id, Phase.PROMOTE, "api")
    while (t := system.store.get_task(api_promote)) is None or t.status is not TaskStatus.SUCCEEDED:
        assert system.bus.deliver_all(limit=1), "the release stalled"
    assert system.traffic()["api"] != before["api"]  # api took the traffic, web not yet

    cancel_run(run.run_id, system.rt, by="tester")
    system.bus.deliver_all()

    result = system.store.get_result(run.run_id)
    assert result is not None and result.status is RunStatus.CANCELLED
    assert system.traffic() == before and result.rolled_back == ["api", "web"]


def test_progress_and_timeline_show_each_release_phase() -> None:
    system, _ = released()
    result = system.run(chain(version="2", web_checks=[FAIL]), release=True)
    run = system.store.get_run(result.run_id)
    assert run is not None

    view = build_view(run, system.store.get_tasks(result.run_id))
    text = render_timeline(view, width=120)
    web = next(line for line in text.splitlines() if line.startswith("web"))
    assert "V!" in web and "T=" in web and "rolled back" in web  # failed verify, reverted
    assert "S stage  V verify  P promote  T revert" in text
    console = Console(file=io.StringIO(), width=200)
    console.print(result_table(result))
    table = console.file.getvalue()  # type: ignore[attr-defined]
    assert "release" in table and "checks 0/1" in table and "(reverted)" in table


def test_rollback_by_default_takes_the_last_promoted_release_not_yet_undone() -> None:
    system, _ = released()
    older = system.run(chain(version="2"), release=True)
    newer = system.run(chain(version="3"), release=True)
    assert last_promoted_run(system.store) == newer.run_id

    system.run(rollback_of=newer.run_id)

    assert last_promoted_run(system.store) == older.run_id


def test_the_dashboard_notes_of_a_release_say_what_it_did() -> None:
    system, _ = released()
    result = system.run(chain(version="2"), release=True)
    back = system.run(rollback_of=result.run_id)

    for run_id, notes in (
        (result.run_id, {"api": "", "web": "", "jobs": "unchanged: not released"}),
        (back.run_id, {"api": "", "web": ""}),
    ):
        run = system.store.get_run(run_id)
        assert run is not None
        view = build_view(run, system.store.get_tasks(run_id))
        assert {row.service: row.note for row in view.rows} == notes


def test_a_release_past_its_run_deadline_still_puts_traffic_back() -> None:
    from datetime import timedelta

    from shared.core.control import sweep

    system, before = released()
    arch = chain(version="2", api_checks=[PASS], web_checks=[PASS], release=STEPS)
    run = dispatch_request(DeployRequest(architecture=arch.model_dump_json()), system.rt)
    while system.tasks(run.run_id, Phase.PROMOTE).get("api") is None or (
        system.tasks(run.run_id, Phase.PROMOTE)["api"].status is not TaskStatus.SUCCEEDED
    ):
        assert system.bus.deliver_all(limit=1), "the release stalled before api was promoted"
    assert system.traffic() != before  # api serves the new revision

    sweep(system.rt, system.rt.clock() + timedelta(seconds=system.rt.policy.run_deadline + 1))
    system.bus.deliver_all()

    result = system.store.get_result(run.run_id)
    assert result is not None and result.status is RunStatus.FAILED
    assert system.traffic() == before
    assert "api" in result.rolled_back


def test_a_promote_stopped_during_its_soak_takes_no_further_step() -> None:
    """The release is cancelled while a stepped promote soaks (as a lapsed lease or a
    revert would overtake it): the promote wakes and must not move traffic on."""
    from shared.core.control import cancel_run
    from shared.messages import CheckOutcome

    system, before = released()
    cancelled: list[str] = []

    class CancelDuringSoak:
        def run(self, check: object, target_url: str) -> CheckOutcome:
            promoting = [
                t
                for t in system.store.tasks.values()
                if t.phase is Phase.PROMOTE and t.status is TaskStatus.RUNNING
            ]
            if promoting and not cancelled:
                cancelled.append(promoting[0].run_id)
                cancel_run(promoting[0].run_id, system.rt, by="test")
            return CheckOutcome(name="ok", passed=True, detail="ok")

    system.rt.checks = CancelDuringSoak()
    arch = chain(version="2", api_checks=[PASS], web_checks=[PASS], release=STEPS)
    result = system.run(arch)

    assert cancelled and result.status is not RunStatus.SUCCEEDED
    new_shares = [
        share
        for _, percents, _ in system.deployer.traffic_log
        for revision, share in percents.items()
        if revision not in before.get(revision.rsplit("-", 1)[0], {})
    ]
    assert new_shares and max(new_shares) == 10  # the first step, and no further
    assert system.traffic() == before


def test_a_promoted_release_removes_earlier_releases_tags_and_keeps_its_own() -> None:
    system, _ = released()
    first = system.run(chain(version="2", web_checks=[FAIL]), release=True)
    assert first.status is RunStatus.FAILED
    failed_tag = release_tag(first.run_id)
    assert failed_tag in system.deployer.tags["web"]  # kept for a look

    second = system.run(chain(version="3"), release=True)

    assert second.status is RunStatus.SUCCEEDED, second.errors
    assert failed_tag not in system.deployer.tags["web"]
    assert release_tag(second.run_id) in system.deployer.tags["web"]
    assert system.run(rollback_of=second.run_id).status is RunStatus.SUCCEEDED


# A verify command that Ctrl-C reached: it dies of SIGINT, as Python and shells do.
INTERRUPTED = {
    "command": [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGINT)"]
}


def test_a_check_stopped_by_ctrl_c_is_reported_cancelled_not_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    system, before = released()
    checks = system.rt.checks
    assert isinstance(checks, HttpAndCommandChecks)
    checks.interrupted.set()  # the CLI's Ctrl-C handler: the key press reached it too

    result = system.run(chain(version="2", web_checks=[INTERRUPTED]), release=True)

    assert result.status is RunStatus.CANCELLED
    assert system.traffic() == before
    (error,) = [e for e in result.errors if e.phase is Phase.VERIFY]
    assert error.error.startswith("cancelled: check ") and "interrupted (SIGINT" in error.error
    assert "failed" not in error.error
    verify = system.tasks(result.run_id, Phase.VERIFY)["web"]
    assert verify.status is TaskStatus.CANCELLED
    assert "release stopped (verify of web cancelled)" in caplog.text
    assert "verify of web failed" not in caplog.text


def test_a_check_that_exits_130_with_no_ctrl_c_fails_the_run_not_cancels_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On Google Cloud, or any run nobody pressed Ctrl-C in, 130 is a failing exit code."""
    monkeypatch.setattr(checks_module, "CTRL_C_GRACE", 0.0, raising=False)
    system, before = released()
    exits_130 = {"command": [sys.executable, "-c", "import sys; sys.exit(130)"]}

    result = system.run(chain(version="2", web_checks=[exits_130]), release=True)

    assert result.status is RunStatus.FAILED
    assert system.traffic() == before
    assert system.tasks(result.run_id, Phase.VERIFY)["web"].status is TaskStatus.FAILED
