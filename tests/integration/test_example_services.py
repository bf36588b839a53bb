"""The example architecture, deployed with LocalDeployer and checked by examples/check.py."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.adapters.local.deployer import LocalDeployer
from shared.adapters.local.processes import processes_in
from shared.architecture.model import Architecture, DeploymentSpec, ServiceSpec
from shared.deployer import Target

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
APPS_IN_DEPENDENCY_ORDER = ["ingest", "enrich", "notify"]


@pytest.fixture
def deployer(tmp_path: Path) -> Iterator[LocalDeployer]:
    deployer = LocalDeployer(tmp_path / "state", health_timeout=30.0)
    yield deployer
    deployer.teardown_all()
    assert processes_in(tmp_path) == []


@pytest.fixture(scope="module")
def architecture() -> Architecture:
    return Architecture.model_validate(yaml.safe_load((EXAMPLES / "architecture.yaml").read_text()))


def resolved(spec: ServiceSpec) -> DeploymentSpec:
    """The deployment with its paths absolute, as planning hands it to a deployer."""
    assert spec.deployment is not None
    deployment = spec.deployment
    templates = {str(EXAMPLES / src): name for src, name in deployment.config_templates.items()}
    return deployment.model_copy(
        update={
            "source_path": str(EXAMPLES / deployment.source_path),
            "config_templates": templates,
        }
    )


def target(spec: ServiceSpec) -> Target:
    return Target(project_id="archdeploy-demo", health_check=spec.health_check)


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5) as response:
        return json.loads(response.read())


def run_check(result: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(result))
    command = [sys.executable, str(EXAMPLES / "check.py"), str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_the_example_architecture_declares_a_director_and_two_dataflows(
    architecture: Architecture,
) -> None:
    assert architecture.project_id == "archdeploy-demo"
    assert architecture.region == "europe-west1"
    assert architecture.director is not None and architecture.director.name == "director"
    assert architecture.director.command_topic is not None
    services = {spec.name: (flow, spec) for flow, spec in architecture.services()}
    assert {name: flow for name, (flow, _) in services.items()} == {
        "director": None,
        "ingest": "orders",
        "enrich": "orders",
        "notify": "notifications",
    }
    assert services["ingest"][1].dependencies == ["director"]
    assert services["enrich"][1].dependencies == ["ingest"]
    for _, spec in services.values():
        assert spec.health_check is not None and spec.health_check.path == "/healthz"
        assert spec.deployment is not None and spec.deployment.environment_vars["LOG_LEVEL"]
        assert (EXAMPLES / spec.deployment.source_path).is_dir()
    assert (EXAMPLES / "services" / "notify" / "Procfile").read_text().startswith("web: ")


def test_the_example_deploys_registers_with_the_director_and_passes_check(
    architecture: Architecture, deployer: LocalDeployer, tmp_path: Path
) -> None:
    # Given every service built in parallel
    specs = {spec.name: (flow, spec) for flow, spec in architecture.services()}
    with ThreadPoolExecutor(max_workers=4) as pool:
        builds = {
            name: pool.submit(deployer.build, name, resolved(spec))
            for name, (_, spec) in specs.items()
        }
        images = {name: future.result() for name, future in builds.items()}

    # When the director is deployed first, then the applications in dependency order
    director_spec = specs["director"][1]
    director_url = deployer.deploy_service(
        "director",
        "director-sa",
        resolved(director_spec).model_copy(update={"image": images["director"]}),
        target=target(director_spec),
    )
    urls = {"director": director_url}
    for name in APPS_IN_DEPENDENCY_ORDER:
        flow, spec = specs[name]
        deployment = resolved(spec)
        env = {
            **deployment.environment_vars,
            "SERVICE_DIRECTOR_URL": director_url,
            "PROJECT_ID": architecture.project_id,
            "SERVICE_NAME": name,
            "DATAFLOW_NAME": flow or "",
        }
        update = {"image": images[name], "environment_vars": env}
        urls[name] = deployer.deploy_service(
            name, spec.service_account, deployment.model_copy(update=update), target=target(spec)
        )

    # Then each application is healthy, registered, and does its job
    for name in APPS_IN_DEPENDENCY_ORDER:
        health = http_json(urls[name] + "/healthz")
        assert health == {
            "registered": True,
            "service": name,
            "dataflow": specs[name][0],
            "project": "archdeploy-demo",
        }
    registered = http_json(director_url + "/services")["services"]
    assert {name: entry["url"] for name, entry in registered.items()} == {
        name: urls[name] for name in APPS_IN_DEPENDENCY_ORDER
    }
    assert http_json(urls["enrich"] + "/enrich", {"id": 7})["currency"] == "EUR"
    assert http_json(urls["notify"] + "/")["role"] == "notifies"

    # And examples/check.py agrees
    result = {
        "run_id": "run-example",
        "status": "succeeded",
        "phase": "done",
        "director_url": director_url,
        "services": {
            name: {
                "service": name,
                "dataflow": specs[name][0],
                "status": "deployed",
                "image": images[name],
                "url": urls[name],
                "error": None,
            }
            for name in specs
        },
    }
    checked = run_check(result, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for name in specs:
        assert images[name].rpartition("@")[2] in checked.stdout
        assert urls[name] in checked.stdout
    assert checked.stdout.count("registered  yes") == len(APPS_IN_DEPENDENCY_ORDER)

    # When an application goes away, check.py fails and names it
    deployer.teardown("notify")
    checked = run_check(result, tmp_path)
    assert checked.returncode == 1
    assert "FAIL notify: unhealthy" in checked.stdout
    assert "FAIL ingest" not in checked.stdout


def test_check_fails_for_a_healthy_service_the_director_does_not_list(
    architecture: Architecture, deployer: LocalDeployer, tmp_path: Path
) -> None:
    director = architecture.director
    ingest = architecture.find_service("ingest")
    assert director is not None and ingest is not None
    director_url = deployer.build_and_deploy(
        "director", "", resolved(director), target=target(director)
    )
    # Registers, but under another name than the one the run result knows it by.
    env = {"SERVICE_DIRECTOR_URL": director_url, "SERVICE_NAME": "renamed"}
    misnamed = resolved(ingest[1]).model_copy(update={"environment_vars": env})
    ingest_url = deployer.build_and_deploy("ingest", "", misnamed, target=target(ingest[1]))
    result = {
        "run_id": "r",
        "status": "failed",
        "director_url": director_url,
        "services": {
            "director": {"image": None, "url": director_url, "status": "deployed", "error": None},
            "ingest": {"image": None, "url": ingest_url, "status": "deployed", "error": None},
            "broken": {"image": None, "url": None, "status": "failed", "error": "build failed"},
        },
    }

    checked = run_check(result, tmp_path)

    assert checked.returncode == 1, checked.stdout
    assert "FAIL ingest: not registered with the director" in checked.stdout
    assert "build failed" in checked.stdout
    assert "FAIL broken" not in checked.stdout  # not deployed: reported, not checked
