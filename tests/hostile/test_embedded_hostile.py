"""The embedded mode treated badly: killed CLIs, Ctrl-C, concurrent commands, other
folders, other environments. Each scenario drives the real CLI and asserts no stale
deploy, no orphan (the autouse `no_orphans` fixture), a clear message and exit code, and
the run's final status."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from tests.hostile.conftest import (
    DAEMON,
    SERVICE,
    answers,
    architecture,
    cli_env,
    finish,
    get,
    records,
    run_cli,
    start_cli,
    stderr_has,
    wait_for,
)


def _starting_pid(state: Path, service: str) -> object:
    """The pid of `service`'s instance once it is recorded as starting (it is not yet
    healthy), else None."""
    for record in records(state):
        if record.get("service") == service and record.get("pid") and "fingerprint" not in record:
            return record["pid"]
    return None


def _serving(state: Path, service: str) -> dict[str, object] | None:
    for record in records(state):
        if record.get("service") == service and "fingerprint" in record:
            return record
    return None


def _logged(state: Path, service: str, text: str) -> bool:
    for record in records(state):
        if record.get("service") == service:
            try:
                return text in Path(str(record["log"])).read_text()
            except OSError:
                return False
    return False


def _status(state_dir: Path, *extra: str) -> dict[str, object]:
    done = run_cli("--state-dir", str(state_dir), "status", "--json", *extra)
    result: dict[str, object] = json.loads(done.out)
    return result


def test_a_killed_runs_tasks_are_never_run_by_a_later_up(tmp_path: Path) -> None:
    """kill -9 mid-deploy, then another project's `up` that sweeps: the dead run ends
    `failed: abandoned`, its services never start under the later process, and `down`
    stops what the killed CLI had started, half-started included."""
    state = tmp_path / "state"
    a = architecture(
        tmp_path / "a",
        {"quick": SERVICE, "stuck": SERVICE},
        project="alpha-one",
        env={"stuck": {"SLOW_START": "300"}},
    )
    b = architecture(
        tmp_path / "b", {"late": SERVICE}, project="beta-two", env={"late": {"SLOW_START": "7"}}
    )
    # A task's lease is half its deadline: alpha's claim lapses 6 s after it was taken,
    # before beta's first sweep (5 s into beta), which used to re-send it.
    fast_clock = cli_env(
        ARCHDEPLOY_REPUBLISH_AFTER_SECONDS="1",
        ARCHDEPLOY_DEPLOY_DEADLINE_SECONDS="12",
        ARCHDEPLOY_HEALTH_TIMEOUT_SECONDS="400",
    )
    first = start_cli("--state-dir", str(state), "up", str(a), env=fast_clock)
    wait_for("alpha's stuck service to be starting", lambda: _starting_pid(state, "stuck"), 60)
    wait_for("alpha's quick service to serve", lambda: _serving(state, "quick"), 60)
    first.kill()
    first.communicate(timeout=10)

    later = run_cli("--state-dir", str(state), "up", str(b), env=fast_clock)

    assert later.code == 0, later.text
    assert "abandoned" in later.err
    runs = run_cli("--state-dir", str(state), "runs").out.splitlines()
    alpha = next(line for line in runs if str(a) in line)
    assert (
        "failed" in alpha
        and f"abandoned: its archdeploy process (pid {first.pid}) is gone" in alpha
    )
    # Nothing of alpha was (re)started by beta's process: one record each, same pids.
    alpha_records = [r for r in records(state) if str(r.get("key", "")).startswith("alpha-one/")]
    assert sorted(str(r["service"]) for r in alpha_records) == ["quick", "stuck"]
    assert all(r.get("env_project") is None for r in alpha_records)
    down = run_cli("--state-dir", str(state), "down", str(a))
    assert down.code == 0, down.text
    assert "quick                    stopped" in down.err
    assert "stuck                    stopped" in down.err
    assert run_cli("--state-dir", str(state), "down", str(b)).code == 0
    assert records(state) == []


def test_an_old_version_killed_mid_run_never_replaces_the_new_deploy(tmp_path: Path) -> None:
    state = tmp_path / "state"
    app = architecture(tmp_path / "app", {"web": SERVICE}, env={"web": {"SLOW_START": "300"}})
    slow_env = cli_env(
        ARCHDEPLOY_HEALTH_TIMEOUT_SECONDS="400",
        ARCHDEPLOY_REPUBLISH_AFTER_SECONDS="1",
        ARCHDEPLOY_DEPLOY_DEADLINE_SECONDS="12",  # the old claim lapses 6 s in
    )
    old = start_cli("--state-dir", str(state), "up", str(app), env=slow_env)
    wait_for("the old version to be starting", lambda: _starting_pid(state, "web"), 60)
    old.kill()
    old.communicate(timeout=10)
    architecture(tmp_path / "app", {"web": SERVICE}, env={"web": {"SLOW_START": "6", "V": "2"}})

    new = run_cli("--state-dir", str(state), "up", str(app), "--json", env=slow_env)

    assert new.code == 0, new.text
    url = json.loads(new.out)["urls"]["web"]
    time.sleep(1.5)  # past republish_after: a re-sent old task would have started by now
    assert get(url)["V"] == "2"
    serving = _serving(state, "web")
    assert serving is not None and serving["url"] == url
    # The old version's half-started instance, left by the killed CLI, was stopped.
    assert [r["instance"] for r in records(state)] == [serving["instance"]]
    assert run_cli("--state-dir", str(state), "down", str(app)).code == 0
    assert not answers(url)


def test_down_stops_a_service_that_daemonized(tmp_path: Path) -> None:
    app = architecture(tmp_path / "app", {"ghost": DAEMON})
    up = run_cli("up", str(app), "--json")
    assert up.code == 0, up.text
    url = json.loads(up.out)["urls"]["ghost"]
    assert answers(url)

    down = run_cli("down", str(app))

    assert down.code == 0, down.text
    assert "ghost                    stopped" in down.err
    assert wait_for("the daemon to stop answering", lambda: not answers(url), 10)


def test_state_is_anchored_to_the_file_not_the_working_directory(tmp_path: Path) -> None:
    app = architecture(tmp_path / "app", {"web": SERVICE})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    up = run_cli("up", str(app), "--json", cwd=elsewhere)
    assert up.code == 0, up.text
    assert (tmp_path / "app" / ".archdeploy" / "runs.db").exists()
    assert not (elsewhere / ".archdeploy").exists()
    url = json.loads(up.out)["urls"]["web"]

    status = run_cli("status", "--file", str(app), "--json")
    assert status.code == 0 and json.loads(status.out)["status"] == "succeeded"
    down = run_cli("down", str(app))  # from the repository: another directory again

    assert down.code == 0, down.text
    assert "web                      stopped" in down.err
    assert not answers(url)
    again = run_cli("down", str(app), cwd=elsewhere)
    assert again.code == 0
    assert "web                      not running" in again.err
    assert "0 services torn down, 1 not running" in again.out


def test_a_second_up_waits_or_refuses_and_down_waits_for_up(tmp_path: Path) -> None:
    app = architecture(tmp_path / "app", {"web": SERVICE}, env={"web": {"SLOW_START": "15"}})
    first = start_cli("up", str(app))
    state = tmp_path / "app" / ".archdeploy"
    wait_for("the first up to start the service", lambda: _starting_pid(state, "web"), 60)

    refused = run_cli("up", str(app), "--no-wait")
    assert refused.code == 2, refused.text
    assert f"in use by archdeploy up (pid {first.pid})" in refused.err
    down = start_cli("down", str(app))
    wait_for("down to say it waits", lambda: stderr_has(down, "waiting for archdeploy up"), 30)

    up_done = finish(first)
    down_done = finish(down)

    assert up_done.code == 0, up_done.text
    assert down_done.code == 0, down_done.text
    assert "web                      stopped" in down_done.err
    assert records(tmp_path / "app" / ".archdeploy") == []
    logs = list((tmp_path / "app" / ".archdeploy" / "run").rglob("*.log"))
    assert logs == [] or all(log.stat().st_size > 0 for log in logs)


def test_one_ctrl_c_cancels_within_two_seconds_and_stops_the_half_started(tmp_path: Path) -> None:
    app = architecture(
        tmp_path / "app",
        {"quick": SERVICE, "stuck": SERVICE},
        env={"stuck": {"SLOW_START": "300"}},
    )
    state = tmp_path / "app" / ".archdeploy"
    up = start_cli("up", str(app), "--json", env=cli_env(ARCHDEPLOY_HEALTH_TIMEOUT_SECONDS="15"))
    wait_for("stuck to be starting", lambda: _starting_pid(state, "stuck"), 60)
    wait_for("quick to serve", lambda: _serving(state, "quick"), 60)

    sent = time.monotonic()
    up.send_signal(signal.SIGINT)
    done = finish(up, timeout=30)
    took = time.monotonic() - sent

    assert done.code == 130, done.text
    assert took < 2.0 + 1.0, f"took {took:.1f}s"  # 2 s, plus this test's own polling
    result = json.loads(done.out)
    assert result["status"] == "cancelled"
    assert list(result["urls"]) == ["quick"]
    assert _status(state)["status"] == "cancelled"
    assert [r["service"] for r in records(state)] == ["quick"]
    assert "bus is closed" not in done.err
    assert run_cli("down", str(app)).code == 0


def test_a_second_ctrl_c_exits_at_once_and_the_next_command_repairs(tmp_path: Path) -> None:
    """The first Ctrl-C is stopping a service that ignores SIGTERM (a 5 s grace before
    SIGKILL); the second exits at once. The next commands end the run and the service."""
    app = architecture(
        tmp_path / "app",
        {"stuck": SERVICE},
        env={"stuck": {"SLOW_START": "300", "IGNORE_TERM": "1"}},
    )
    state = tmp_path / "app" / ".archdeploy"
    up = start_cli("up", str(app), env=cli_env(ARCHDEPLOY_HEALTH_TIMEOUT_SECONDS="400"))
    wait_for("stuck to ignore SIGTERM", lambda: _logged(state, "stuck", "ignoring SIGTERM"), 60)

    up.send_signal(signal.SIGINT)
    wait_for("the first Ctrl-C to be seen", lambda: stderr_has(up, "cancelling"), 10)
    sent = time.monotonic()
    up.send_signal(signal.SIGINT)
    done = finish(up, timeout=10)
    took = time.monotonic() - sent

    assert done.code == 130, done.text
    assert took < 1.0, f"the second Ctrl-C took {took:.1f}s"
    status = run_cli("status", "--file", str(app), "--json")
    assert status.code == 1, status.text
    result = json.loads(status.out)
    assert result["status"] == "failed"
    assert result["error"] == f"abandoned: its archdeploy process (pid {up.pid}) is gone"
    down = run_cli("down", str(app))
    assert "stuck                    stopped" in down.err
    assert records(state) == []


ENVIRONMENTS = "deployment_environments:\n  staging:\n    labels: {stage: staging}\n"


def test_environments_are_separate_services_locally(tmp_path: Path) -> None:
    app = architecture(tmp_path / "app", {"web": SERVICE}, environments=ENVIRONMENTS)
    default = run_cli("up", str(app), "--json")
    staging = run_cli("up", str(app), "-e", "staging", "--json")
    assert default.code == 0 and staging.code == 0, default.text + staging.text
    default_url = json.loads(default.out)["urls"]["web"]
    staging_url = json.loads(staging.out)["urls"]["web"]
    assert default_url != staging_url
    assert answers(default_url) and answers(staging_url)

    down = run_cli("down", str(app))

    assert down.code == 0 and "1 services torn down" in down.out
    assert not answers(default_url)
    assert answers(staging_url)
    assert run_cli("down", str(app), "-e", "staging").code == 0
    assert not answers(staging_url)


def test_state_files_are_private(tmp_path: Path) -> None:
    app = architecture(tmp_path / "app", {"web": SERVICE})
    assert run_cli("up", str(app)).code == 0
    state = tmp_path / "app" / ".archdeploy"
    try:
        assert state.stat().st_mode & 0o777 == 0o700
        for path in [state / "runs.db", state / "lock", *(state / "run").glob("*/*/*.json")]:
            assert path.stat().st_mode & 0o077 == 0, path
        for folder in [p for p in (state / "run").rglob("*") if p.is_dir()]:
            assert folder.stat().st_mode & 0o077 == 0, folder
    finally:
        assert run_cli("down", str(app)).code == 0
