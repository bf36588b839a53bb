"""The ContainerDeployer contract, run against FakeDeployer and LocalDeployer: a build
returns an image URI, a deploy a URL that answers, teardown is idempotent, and every
failure is a BackendError naming the service.

"Answers" means an HTTP GET succeeds for LocalDeployer; the fake serves nothing, so for it
the URL must be the one it reports as serving the service.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.architecture.model import DeploymentSpec
from shared.deployer import ContainerDeployer, IncrementalDeployer
from shared.errors import BackendError

SERVER = """\
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


class Harness:
    def __init__(self, deployer: Any, root: Path) -> None:
        self.deployer = deployer
        self.root = root

    def source(self, name: str, main: str = SERVER) -> DeploymentSpec:
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "main.py").write_text(main)
        return DeploymentSpec(source_path=str(directory))

    def failing_build(self, name: str) -> DeploymentSpec:
        return DeploymentSpec(source_path=str(self.root / "missing" / name))

    def failing_deploy(self, name: str) -> DeploymentSpec:
        return self.source(name, main="import sys\nsys.exit(3)\n")

    def answers(self, name: str, url: str) -> bool:
        serving = self.deployer.deployed(name)
        return serving is not None and serving.url == url


class FakeHarness(Harness):
    def failing_build(self, name: str) -> DeploymentSpec:
        self.deployer.fail_build[name] = "the build step failed"
        return self.source(name)

    def failing_deploy(self, name: str) -> DeploymentSpec:
        self.deployer.fail_deploy[name] = "the revision did not start"
        return self.source(name)


class LocalHarness(Harness):
    def answers(self, name: str, url: str) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=5) as response:
            return bool(response.status == 200 and super().answers(name, url))


@pytest.fixture(params=["fake", "local"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "fake":
        from tests.fakes import FakeDeployer

        yield FakeHarness(FakeDeployer(), tmp_path / "src")
    else:
        from shared.adapters.local.deployer import LocalDeployer
        from shared.adapters.local.processes import processes_in

        local = LocalDeployer(tmp_path / "state", health_timeout=20.0)
        yield LocalHarness(local, tmp_path / "src")
        local.teardown_all()
        assert processes_in(tmp_path) == []


def test_it_implements_the_port_and_its_incremental_abilities(harness: Harness) -> None:
    assert isinstance(harness.deployer, ContainerDeployer)
    assert isinstance(harness.deployer, IncrementalDeployer)


def test_a_build_returns_an_image_uri_pinned_by_digest(harness: Harness) -> None:
    image = harness.deployer.build("api", harness.source("api"))
    assert "@sha256:" in image and image.split("@sha256:")[1]


def test_a_deploy_of_the_built_image_returns_a_url_that_answers(harness: Harness) -> None:
    spec = harness.source("api")
    image = harness.deployer.build("api", spec)

    url = harness.deployer.deploy_service(
        "api", "api-sa@p.iam", spec.model_copy(update={"image": image})
    )

    assert harness.answers("api", url)


def test_build_and_deploy_returns_a_url_that_answers(harness: Harness) -> None:
    url = harness.deployer.build_and_deploy("api", "", harness.source("api"))
    assert harness.answers("api", url)


def test_teardown_is_idempotent_and_stops_the_service(harness: Harness) -> None:
    harness.deployer.build_and_deploy("api", "", harness.source("api"))

    harness.deployer.teardown("api")
    harness.deployer.teardown("api")
    harness.deployer.teardown("never-deployed")

    assert harness.deployer.deployed("api") is None


def test_a_failed_build_is_a_backend_error_naming_the_service(harness: Harness) -> None:
    with pytest.raises(BackendError, match="building api"):
        harness.deployer.build("api", harness.failing_build("api"))


def test_a_failed_deploy_is_a_backend_error_naming_the_service(harness: Harness) -> None:
    spec = harness.failing_deploy("api")
    image = harness.deployer.build("api", spec)
    with pytest.raises(BackendError, match="deploying api"):
        harness.deployer.deploy_service("api", "", spec.model_copy(update={"image": image}))
