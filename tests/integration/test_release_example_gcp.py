"""Releases of the example on Google Cloud's parts: the embedded system (bootstrap's
`embedded`, SQLite, in-process bus) with `GcpDeployer` driving the real Cloud Build and
run_v2 clients against the strict fakes, and the Cloud Run check runner sending ID tokens.

The fake's URLs answer HTTP through `RunDataPlane` (tests/fakes_google/run_dataplane.py):
a service's URL splits requests by the traffic the client set, a tag's URL reaches its
revision, and a request needs an ID token for one of the service's URLs from an account
holding roles/run.invoker (the worker's, granted on the project as terraform does). Its
"containers" answer with the environment archdeploy deployed, so a version is `VERSION`
in a service's environment. The only seam is DNS: the check runner's opener sends
`*.run.app` to the data plane on loopback. Every "what serves" claim is a GET on a
service's stable URL, with a token, as any caller would make it.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.cloud import run_v2

from shared.adapters.gcp.deployer import GcpDeployer
from shared.adapters.gcp.run_checks import CloudRunChecks, service_audience
from shared.bootstrap import Embedded, embedded
from shared.messages import DeployRequest, Phase, RunResult, RunStatus, TaskStatus
from shared.settings import Settings
from tests.fakes_google.cloudrun_server import FakeCloudRun
from tests.fakes_google.fixtures import FAKE_PROJECT
from tests.fakes_google.run_dataplane import RunDataPlane

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WORKER = f"archdeploy-worker@{FAKE_PROJECT}.iam.gserviceaccount.com"
RELEASED = ("ingest", "enrich")
BY_REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION


class Cloud:
    def __init__(self, tmp: Path, deployer: GcpDeployer, fake: FakeCloudRun) -> None:
        self.fake = fake
        self.plane = RunDataPlane(
            fake, fake.authority, project_invokers={f"serviceAccount:{WORKER}"}
        )
        self.checks = CloudRunChecks(
            lambda audience: fake.authority.mint(WORKER, audience), opener=self.plane.opener()
        )
        self.system: Embedded = embedded(
            Settings(state_dir=tmp), deployer=deployer, checks=self.checks
        )
        self.base = yaml.safe_load((EXAMPLES / "architecture.yaml").read_text())

    def run(self, **request: Any) -> RunResult:
        run = self.system.submit(DeployRequest(source_root=str(EXAMPLES), **request))
        return self.system.wait(run.run_id, timeout=120)

    def up(
        self,
        version: str,
        verify: dict[str, list[dict[str, Any]]] | None = None,
        block: dict[str, Any] | None = None,
        **request: Any,
    ) -> RunResult:
        document = json.loads(json.dumps(self.base))
        for name in RELEASED:
            deployment = document["dataflows"]["orders"]["services"][name]["deployment"]
            deployment["environment_vars"]["VERSION"] = version
            deployment["verify"] = (verify or {}).get(name, [])
        if block:  # the file's `release:`
            document["release"] = block
        return self.run(architecture=yaml.safe_dump(document), **request)

    def version(self, url: str) -> str:
        """What the stable URL serves, asked as a caller with a token would."""
        token = self.checks.token(service_audience(url))
        request = urllib.request.Request(url + "/", headers={"Authorization": f"Bearer {token}"})
        with self.plane.opener().open(request, timeout=10) as answer:
            return str(json.load(answer)["env"].get("VERSION"))

    def versions(self, urls: dict[str, str]) -> dict[str, str]:
        return {name: self.version(urls[name]) for name in RELEASED}

    def tasks(self, run_id: str, phase: Phase) -> dict[str, Any]:
        return {t.service: t for t in self.system.store.get_tasks(run_id, phase)}

    def close(self) -> None:
        self.system.close()
        self.plane.stop()


@pytest.fixture
def cloud(
    tmp_path: Path, gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> Iterator[Cloud]:
    cloud = Cloud(tmp_path, gcp_deployer, fake_cloudrun)
    yield cloud
    cloud.close()


def version_is(version: str) -> dict[str, Any]:
    return {"http": {"path": "/healthz", "contains": f'"VERSION": "{version}"', "timeout": "10s"}}


def deploy_v1(cloud: Cloud) -> dict[str, str]:
    first = cloud.up("v1")
    assert first.status is RunStatus.SUCCEEDED, first.errors
    assert cloud.versions(first.urls) == {"ingest": "v1", "enrich": "v1"}
    return first.urls


def test_a_failed_check_promotes_nothing_a_passing_one_promotes_all_then_rollback(
    cloud: Cloud,
) -> None:
    urls = deploy_v1(cloud)

    failed = cloud.up(
        "v2", {"ingest": [version_is("v9")], "enrich": [version_is("v2")]}, release=True
    )

    assert failed.status is RunStatus.FAILED
    (error,) = [e for e in failed.errors if e.phase is Phase.VERIFY]
    assert error.service == "ingest" and '"VERSION": "v2"' in error.error  # the tag URL's answer
    assert failed.services["enrich"].checks[0].passed  # with a token the data plane admitted
    assert cloud.versions(urls) == {"ingest": "v1", "enrich": "v1"}
    promotes = cloud.tasks(failed.run_id, Phase.PROMOTE)
    assert {promotes[n].status for n in RELEASED} == {TaskStatus.SKIPPED}
    assert all(t.reused for n, t in promotes.items() if n not in RELEASED)

    promoted = cloud.up("v2", {n: [version_is("v2")] for n in RELEASED}, release=True)

    assert promoted.status is RunStatus.SUCCEEDED, promoted.errors
    assert cloud.versions(urls) == {"ingest": "v2", "enrich": "v2"}
    assert all(promoted.services[n].promoted_percent == 100 for n in RELEASED)
    promotes = cloud.tasks(promoted.run_id, Phase.PROMOTE)
    assert promotes["ingest"].finished_at <= promotes["enrich"].started_at

    back = cloud.run(rollback_of=promoted.run_id)

    assert back.status is RunStatus.SUCCEEDED, back.errors
    assert cloud.versions(urls) == {"ingest": "v1", "enrich": "v1"}
    reverts = cloud.tasks(back.run_id, Phase.REVERT)
    assert reverts["enrich"].finished_at <= reverts["ingest"].started_at


def test_a_canary_moves_traffic_by_revision_through_each_step(cloud: Cloud) -> None:
    deploy_v1(cloud)
    steps = {"strategy": "steps", "steps": [50, 100], "soak": "100ms"}

    result = cloud.up("v2", {n: [version_is("v2")] for n in RELEASED}, block=steps)

    assert result.status is RunStatus.SUCCEEDED, result.errors
    sent = [
        {t.revision: t.percent for t in call.service.traffic if t.percent}
        for call in cloud.fake.calls("UpdateService")
        if call.service.name.endswith("/services/enrich")
        and all(t.type_ == BY_REVISION for t in call.service.traffic)
    ]
    staged = (result.services["enrich"].staged_revision or "").rsplit("/", 1)[-1]
    assert [s.get(staged) for s in sent if staged in s] == [50, 100]
    halfway = next(s for s in sent if s.get(staged) == 50)
    assert sorted(halfway.values()) == [50, 50]  # the other half on what served before
