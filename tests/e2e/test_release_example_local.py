"""Releases of the example on the real local twin, as a user runs them: `archdeploy up
--release` and `archdeploy rollback` in a subprocess, LocalDeployer's processes, the front
end splitting stable URLs by percent, each tag on a loopback port of its own, and the
release checks as HTTP requests and commands. Every "what serves" claim is a real GET on
a stable URL.

A version is a change to a service's source (`role` in its `GET /` answer), as a user's
commit would be; `verify:` checks it on the tag URL before any traffic moves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.local.deployer import LocalDeployer
from shared.adapters.local.processes import processes_in
from shared.adapters.local.sqlite_store import SqliteRunStore
from shared.messages import Phase, TaskStatus
from tests.release_example import ROLES, ExampleCopy, roles

OTHERS = ("director", "notify")  # never changed: a release leaves them alone


class Example(ExampleCopy):
    """A copy of the example whose ingest and enrich a test changes, and the CLI on it."""

    def archdeploy(self, *args: str) -> tuple[int, dict[str, Any], str]:
        command = [sys.executable, "-m", "shared.cli.main", "--state-dir", str(self.state)]
        proc = subprocess.run(
            [*command, *args, "--json"], capture_output=True, text=True, timeout=240, check=False
        )
        assert proc.stdout.strip(), proc.stderr
        return proc.returncode, json.loads(proc.stdout), proc.stderr

    def version(
        self,
        version: str,
        verify: dict[str, list[dict[str, Any]]] | None = None,
        release: dict[str, Any] | None = None,
    ) -> None:
        """Ingest and enrich answer `role (version)`; `verify` checks per service."""
        document = self.answer_version(version)
        for name, checks in (verify or {}).items():
            spec = document["dataflows"]["orders"]["services"][name]
            spec["deployment"]["verify"] = checks
        if release:
            document["release"] = release
        self.write(document)

    def tasks(self, run_id: str, phase: Phase) -> dict[str, Any]:
        store = SqliteRunStore(self.state / "runs.db")
        try:
            return {t.service: t for t in store.get_tasks(run_id, phase)}
        finally:
            store.close()


def contains(text: str) -> dict[str, Any]:
    return {"http": {"path": "/", "status": 200, "contains": text, "timeout": "10s"}}


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Example]:
    example = Example(tmp_path)
    yield example
    LocalDeployer(example.state).teardown_all()  # even if the test failed halfway
    assert processes_in(tmp_path) == []


def deploy_v1(example: Example) -> dict[str, str]:
    example.version("v1")
    code, result, err = example.archdeploy("up", str(example.file))
    assert code == 0, err
    urls: dict[str, str] = result["urls"]
    assert roles(urls) == {name: f"{r} (v1)" for name, r in ROLES.items()}
    return urls


def test_a_failed_check_promotes_nothing_a_passing_release_promotes_all_then_rollback(
    example: Example,
) -> None:
    urls = deploy_v1(example)
    v1 = roles(urls)

    # A release whose ingest check fails: enrich passed, but nothing is promoted.
    example.version("v2", {"ingest": [contains("(v9)")], "enrich": [contains("(v2)")]})
    code, failed, err = example.archdeploy("up", str(example.file), "--release")

    assert code == 1, err
    assert failed["status"] == "failed"
    (error,) = [e for e in failed["errors"] if e["phase"] == "verify"]
    assert error["service"] == "ingest" and "without '(v9)'" in error["error"]
    assert "takes orders in (v2)" in error["error"]  # the tag URL answered the new version
    assert failed["services"]["enrich"]["checks"][0]["passed"] is True
    assert roles(urls) == v1  # real GETs on the stable URLs: the old version serves
    promotes = example.tasks(failed["run_id"], Phase.PROMOTE)
    assert {n: t.status for n, t in promotes.items() if n in ROLES} == dict.fromkeys(
        ROLES, TaskStatus.SKIPPED
    )
    assert promotes["notify"].reused  # nothing staged: left alone (the director is no release's)

    # The same change with checks that pass: promoted, dependencies first.
    example.version("v2", {"ingest": [contains("(v2)")], "enrich": [contains("(v2)")]})
    code, promoted, err = example.archdeploy("up", str(example.file), "--release")

    assert code == 0, err
    assert roles(urls) == {name: f"{r} (v2)" for name, r in ROLES.items()}
    for name in ROLES:
        assert promoted["services"][name]["promoted_percent"] == 100
    for name in OTHERS:  # unchanged: neither staged nor promoted
        assert promoted["services"][name]["staged_revision"] is None
    promotes = example.tasks(promoted["run_id"], Phase.PROMOTE)
    assert promotes["ingest"].finished_at <= promotes["enrich"].started_at

    # Rolling that release back: the stable URLs serve v1 again.
    code, back, err = example.archdeploy("rollback")

    assert code == 0, err
    assert back["status"] == "succeeded"
    assert roles(urls) == v1
    for name in ROLES:  # the rollback's own result says what it did, and where
        assert back["services"][name]["status"] == "rolled back"
        assert back["services"][name]["url"] == urls[name]
    reverts = example.tasks(back["run_id"], Phase.REVERT)
    assert reverts["enrich"].finished_at <= reverts["ingest"].started_at  # dependents first


def test_a_canary_splits_the_stable_url_at_each_step(example: Example) -> None:
    urls = deploy_v1(example)
    # enrich's check, run at verify and again at the 50% step, asks its stable URL
    # 20 times and writes down which versions answered.
    seen = example.root / "seen.jsonl"
    probe = (
        "import json, sys, urllib.request as u\n"
        "o = u.build_opener(u.ProxyHandler({}))\n"
        "roles = [json.load(o.open(sys.argv[1] + '/', timeout=10))['role'] for _ in range(20)]\n"
        "open(sys.argv[2], 'a').write(json.dumps(sorted(roles)) + '\\n')\n"
    )
    check = {"command": [sys.executable, "-c", probe, urls["enrich"], str(seen)]}
    example.version(
        "v2",
        {"ingest": [contains("(v2)")], "enrich": [contains("(v2)"), check]},
        release={"strategy": "steps", "steps": [50, 100], "soak": "100ms"},
    )

    code, result, err = example.archdeploy("up", str(example.file))

    assert code == 0, err
    verify, step = (json.loads(line) for line in seen.read_text().splitlines())
    old, new = "enriches orders (v1)", "enriches orders (v2)"
    assert verify == [old] * 20  # staged, tagged, but no traffic yet
    assert step == [old] * 10 + [new] * 10  # at 50%: exactly half of the stable URL's requests
    assert roles(urls)["enrich"] == new  # and all of it at 100%
    promotes = example.tasks(result["run_id"], Phase.PROMOTE)
    assert promotes["ingest"].finished_at <= promotes["enrich"].started_at
    assert result["services"]["enrich"]["promoted_percent"] == 100
