"""Hostile releases on the local twin: the real CLI on a copy of the example, killed,
interrupted, raced and misused mid-release. A release's verify command blocks until the
test lets it go (a file it waits for), so the test knows where the release is when it
strikes. Every "what serves" claim is a real GET on a stable URL."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.conftest import (
    Done,
    answers,
    cli_env,
    finish,
    kill_group,
    leftovers,
    run_cli,
    start_cli,
    stderr_has,
    wait_for,
)
from tests.release_example import ROLES, ExampleCopy, role, roles

# A verify command: says it started (a file), then waits (bounded) for the test's go file.
GATE = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGINT, lambda *_: os._exit(3))\n"
    "runs = open(sys.argv[1] + '.runs', 'a+')\n"
    "runs.write('.'); runs.flush(); runs.seek(0)\n"
    "if len(runs.read()) < int(sys.argv[3]):\n"
    "    sys.exit(0)\n"
    "open(sys.argv[1], 'w').close()\n"
    "end = time.monotonic() + 60\n"
    "while not os.path.exists(sys.argv[2]) and time.monotonic() < end:\n"
    "    time.sleep(0.02)\n"
    "sys.exit(0 if os.path.exists(sys.argv[2]) else 1)\n"
)


class Example(ExampleCopy):
    """A copy of the example and the real CLI on its state folder."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.started = root / "check-started"
        self.go = root / "check-go"

    def args(self, *args: str) -> list[str]:
        return ["--state-dir", str(self.state), *args]

    def run(self, *args: str) -> Done:
        return run_cli(*self.args(*args), env=cli_env(), timeout=180)

    def json(self, *args: str) -> tuple[int, dict[str, Any], str]:
        done = self.run(*args, "--json")
        assert done.out.strip(), done.err
        return done.code, json.loads(done.out), done.err

    def version(
        self,
        version: str,
        gated: str | None = None,
        at: int = 1,
        failing: str | None = None,
        **release: Any,
    ) -> None:
        """Ingest and enrich answer `role (version)`; `gated` names a service whose check
        blocks on the go file from its `at`th run on (1: verify; 2: the first step);
        `failing` one whose check wants a version that never comes."""
        document = self.answer_version(version)
        if gated:
            spec = document["dataflows"]["orders"]["services"][gated]["deployment"]
            gate = [sys.executable, "-c", GATE, str(self.started), str(self.go), str(at)]
            spec["verify"] = [{"command": gate, "timeout": "90s"}]
        if failing:
            spec = document["dataflows"]["orders"]["services"][failing]["deployment"]
            spec["verify"] = [{"http": {"path": "/", "contains": "(v9)", "timeout": "10s"}}]
        if release:
            document["release"] = release
        self.write(document)
        self.started.unlink(missing_ok=True)
        Path(f"{self.started}.runs").unlink(missing_ok=True)
        self.go.unlink(missing_ok=True)


def served(version: str) -> dict[str, str]:
    return {name: f"{r} ({version})" for name, r in ROLES.items()}


@pytest.fixture
def example(tmp_path: Path) -> Example:
    return Example(tmp_path)


def deploy_v1(example: Example) -> dict[str, str]:
    example.version("v1")
    code, result, err = example.json("up", str(example.file))
    assert code == 0, err
    urls: dict[str, str] = result["urls"]
    assert roles(urls) == served("v1")
    return urls


def down(example: Example) -> None:
    done = example.run("down", str(example.file))
    assert done.code == 0, done.text
    assert leftovers(example.root) == []


def test_kill_9_mid_verify_promotes_nothing_and_the_next_release_goes_through(
    example: Example,
) -> None:
    urls = deploy_v1(example)
    example.version("v2", gated="ingest")
    proc = start_cli(*example.args("up", str(example.file), "--release"))
    wait_for("the verify check to start", example.started.exists, timeout=120)

    kill_group(proc, signal.SIGKILL)
    proc.wait(timeout=10)

    assert roles(urls) == served("v1")  # nothing unverified serves
    status = example.run("status")  # ends the dead run: abandoned, exit 1 as a failed run
    assert status.code == 1 and "abandoned" in status.text, status.text
    assert roles(urls) == served("v1")
    example.go.touch()  # a check the dead run left could now pass: it must not promote
    example.version("v2")
    code, _, err = example.json("up", str(example.file), "--release")
    assert code == 0, err
    assert roles(urls) == served("v2")
    code, _, err = example.json("rollback")
    assert code == 0, err
    assert roles(urls) == served("v1")
    down(example)


@pytest.mark.parametrize("then", [["--release"], []], ids=["release", "deploy"])
def test_kill_9_mid_promote_leaves_only_verified_versions_serving(
    example: Example, then: list[str]
) -> None:
    """Killed at a 50% step: the next run finds the split and finishes the job, rather
    than calling the service unchanged (its newer revision has the wanted fingerprint)."""
    urls = deploy_v1(example)
    example.version("v2", gated="ingest", at=2, strategy="steps", steps=[50, 100], soak="10ms")
    proc = start_cli(*example.args("up", str(example.file), "--release"))
    wait_for("the 50% step's check to start", example.started.exists, timeout=120)

    kill_group(proc, signal.SIGKILL)
    proc.wait(timeout=10)

    for _ in range(4):  # old or verified new, never anything else
        assert role(urls["ingest"]) in {served("v1")["ingest"], served("v2")["ingest"]}
    status = example.run("status")
    assert "abandoned" in status.text, status.text
    example.go.touch()
    example.version("v2")
    code, result, err = example.json("up", str(example.file), *then)
    assert code == 0, err
    assert result["services"]["ingest"]["unchanged"] is False
    assert [role(urls["ingest"]) for _ in range(4)] == [served("v2")["ingest"]] * 4
    down(example)


def test_ctrl_c_mid_verify_exits_130_and_the_old_version_serves(example: Example) -> None:
    urls = deploy_v1(example)
    example.version("v2", gated="ingest")
    proc = start_cli(*example.args("up", str(example.file), "--release"))
    wait_for("the verify check to start", example.started.exists, timeout=120)

    kill_group(proc, signal.SIGINT)
    done = finish(proc)

    assert done.code == 130, done.text
    assert roles(urls) == served("v1")
    status = example.run("status", "--json")
    assert json.loads(status.out)["status"] == "cancelled", status.text
    # The Ctrl-C reached the verify command too (one process group): it was cancelled,
    # not a check that failed.
    # The run's reason is whichever the release engine saw first, both true: the verify
    # task ended cancelled, or the run was marked cancelled by the Ctrl-C handler's thread.
    reasons = ("verify of ingest cancelled", "cancelled by Ctrl-C")
    assert any(reason in done.text for reason in reasons), done.text
    assert "ingest (verify): cancelled: check `" in done.text, done.text
    assert "failed" not in done.text, done.text
    down(example)


def test_ctrl_c_mid_promote_puts_traffic_back(example: Example) -> None:
    urls = deploy_v1(example)
    example.version("v2", gated="ingest", at=2, strategy="steps", steps=[50, 100], soak="10ms")
    proc = start_cli(*example.args("up", str(example.file), "--release"))
    wait_for("the 50% step's check to start", example.started.exists, timeout=120)

    kill_group(proc, signal.SIGINT)
    done = finish(proc)

    assert done.code == 130, done.text
    assert [role(urls["ingest"]) for _ in range(4)] == [served("v1")["ingest"]] * 4
    down(example)


def test_a_second_release_on_the_same_state_is_refused_with_no_wait(example: Example) -> None:
    urls = deploy_v1(example)
    example.version("v2", gated="ingest")
    proc = start_cli(*example.args("up", str(example.file), "--release"))
    wait_for("the verify check to start", example.started.exists, timeout=120)

    second = example.run("up", str(example.file), "--release", "--no-wait")
    again = example.run("rollback", "--no-wait")
    example.go.touch()
    first = finish(proc)

    assert second.code == 2 and "archdeploy up (pid" in second.text, second.text
    assert again.code == 2, again.text
    assert first.code == 0, first.text
    assert roles(urls) == served("v2")
    down(example)


def test_rollback_misuse_gets_clear_errors(example: Example) -> None:
    none = example.run("rollback")
    assert none.code == 2 and "no runs here" in none.text, none.text
    deploy_v1(example)
    deploy_run = json.loads(example.run("status", "--json").out)["run_id"]
    plain = example.run("rollback", deploy_run)
    assert plain.code == 2 and f"run '{deploy_run}' is not a release" in plain.text, plain.text
    unknown = example.run("rollback", "r-0000000000000000")
    assert unknown.code == 2 and "no run 'r-0000000000000000' here" in unknown.text, unknown.text

    example.version("v2", failing="enrich")
    code, failed, err = example.json("up", str(example.file), "--release")
    assert code == 1 and failed["status"] == "failed", err
    of_failed = example.run("rollback", failed["run_id"])
    assert of_failed.code == 2 and "promoted nothing" in of_failed.text, of_failed.text

    example.version("v3")
    code, promoted, err = example.json("up", str(example.file), "--release")
    assert code == 0, err
    code, back, err = example.json("rollback")
    assert code == 0 and back["status"] == "succeeded", err
    twice = example.run("rollback")
    assert twice.code == 2 and "no promoted release to roll back" in twice.text, twice.text
    of_rollback = example.run("rollback", back["run_id"])
    assert of_rollback.code == 2, of_rollback.text
    assert f"is a rollback (of {promoted['run_id']})" in of_rollback.text, of_rollback.text
    again = example.run("rollback", promoted["run_id"])  # named twice: idempotent, no harm
    assert again.code == 0, again.text
    assert roles(back["urls"]) == served("v1")
    down(example)


def test_down_after_releases_stops_every_revision_and_tag_port(example: Example) -> None:
    urls = deploy_v1(example)
    example.version("v2")
    code, promoted, err = example.json("up", str(example.file), "--release")
    assert code == 0, err
    example.version("v3", failing="ingest")  # staged, tagged, never promoted
    code, failed, err = example.json("up", str(example.file), "--release")
    assert code == 1, err
    tags = [
        entry["tag_url"]
        for result in (promoted, failed)
        for entry in result["services"].values()
        if entry.get("tag_url")
    ]
    assert len(tags) == 4 and all(answers(url) for url in tags), tags

    down(example)

    assert [url for url in [*tags, *urls.values()] if answers(url)] == []


def test_a_second_release_waits_for_the_first_then_finds_nothing_to_do(example: Example) -> None:
    urls = deploy_v1(example)
    example.version("v2", gated="ingest")
    first = start_cli(*example.args("up", str(example.file), "--release"))
    wait_for("the verify check to start", example.started.exists, timeout=120)
    second = start_cli(*example.args("up", str(example.file), "--release", "--json"))
    wait_for("the second to wait", lambda: stderr_has(second, "waiting for archdeploy up (pid"))

    example.go.touch()
    done = finish(first)
    after = finish(second)

    assert done.code == 0, done.text
    assert after.code == 0, after.text
    result = json.loads(after.out)
    assert {result["services"][name]["status"] for name in ROLES} == {"unchanged"}
    assert roles(urls) == served("v2")
    down(example)
