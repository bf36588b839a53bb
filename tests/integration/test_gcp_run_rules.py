"""The strict fake Cloud Run refuses what Cloud Run refuses; the adapter sends what it accepts.

Each refusal cites its rule (tests/fakes_google/run_rules.py has the quotes): "Configure
CPU limits for services" (run/docs/configuring/services/cpu), the v2
ResourceRequirements.cpu_idle field doc, about-concurrency, and traffic tags.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.api_core import exceptions as api
from google.cloud import run_v2

from shared.adapters.gcp.deployer import GcpDeployer
from shared.architecture.loading import architecture_json_schema
from shared.architecture.model import DeploymentSpec
from shared.deployer import Target
from tests.fakes_google.cloudrun_server import FakeCloudRun
from tests.fakes_google.fixtures import FAKE_PROJECT, FAKE_REGION, RUNTIME_ACCOUNT

IMAGE = "europe-west1-docker.pkg.dev/archdeploy-fake/archdeploy/svc@sha256:" + "c" * 64
PARENT = f"projects/{FAKE_PROJECT}/locations/{FAKE_REGION}"
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST


def _service(cpu: str, memory: str, *, cpu_idle: bool, concurrency: int = 0) -> Any:
    resources = run_v2.ResourceRequirements(
        limits={"cpu": cpu, "memory": memory}, cpu_idle=cpu_idle
    )
    container = run_v2.Container(image=IMAGE, resources=resources)
    template = run_v2.RevisionTemplate(
        containers=[container],
        service_account=RUNTIME_ACCOUNT,
        max_instance_request_concurrency=concurrency,
    )
    return run_v2.Service(template=template)


def _create(client: Any, service: Any, service_id: str = "svc") -> Any:
    return client.create_service(parent=PARENT, service=service, service_id=service_id).result()


@pytest.mark.parametrize(
    ("cpu", "memory", "cpu_idle", "concurrency", "field"),
    [
        # cpu < 1 without cpu_idle: "must be set to request-based billing"
        ("0.5", "512Mi", False, 1, "cpu_idle"),
        # cpu < 1: "Maximum concurrency must be set to 1"
        ("0.5", "512Mi", True, 80, "max_instance_request_concurrency"),
        # "A minimum of 1 vCPU is needed to set a memory limit greater than 1GiB"
        ("0.5", "2Gi", True, 1, "limits"),
        # "Setting 4 CPU requires at least 2Gi of memory"
        ("4", "512Mi", True, 0, "limits"),
        # values above 1 are integers of the table: 1, 2, 4, 6, 8
        ("3", "2Gi", True, 0, "limits"),
        # about-concurrency: "a maximum of 1000"
        ("1", "512Mi", True, 1001, "max_instance_request_concurrency"),
    ],
)
def test_the_fake_refuses_impossible_cpu_settings(
    cloudrun_client: Any, cpu: str, memory: str, cpu_idle: bool, concurrency: int, field: str
) -> None:
    with pytest.raises(api.InvalidArgument) as refused:
        _create(cloudrun_client, _service(cpu, memory, cpu_idle=cpu_idle, concurrency=concurrency))
    assert field in refused.value.message


def test_the_fake_accepts_a_fraction_with_request_billing_and_concurrency_one(
    cloudrun_client: Any,
) -> None:
    service = _create(cloudrun_client, _service("0.5", "1Gi", cpu_idle=True, concurrency=1))
    assert service.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED


def test_the_deployer_sends_what_cloud_run_needs_for_a_fraction_of_a_cpu(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    spec = DeploymentSpec(image=IMAGE, cpu="0.5", memory="1Gi")
    gcp_deployer.deploy_service("svc", "", spec, target=Target())

    template = fake_cloudrun.calls("CreateService")[0].service.template
    assert template.containers[0].resources.cpu_idle is True
    assert template.max_instance_request_concurrency == 1
    assert template.execution_environment == run_v2.ExecutionEnvironment.EXECUTION_ENVIRONMENT_GEN1


def test_cpu_always_allocated_and_concurrency_reach_the_template(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    spec = DeploymentSpec(image=IMAGE, cpu="2", cpu_always_allocated=True, concurrency=250)
    gcp_deployer.deploy_service("svc", "", spec, target=Target())

    template = fake_cloudrun.calls("CreateService")[0].service.template
    assert template.containers[0].resources.cpu_idle is False
    assert template.max_instance_request_concurrency == 250


@pytest.mark.parametrize(
    ("tag", "fragment"),
    [
        ("a" * 44, "cannot exceed 46 characters"),  # with "svc": 47
        ("Blue_1", "lowercase"),
    ],
)
def test_the_fake_refuses_traffic_tags_cloud_run_refuses(
    cloudrun_client: Any, tag: str, fragment: str
) -> None:
    service = _service("1", "512Mi", cpu_idle=True)
    service.traffic = [run_v2.TrafficTarget(type_=LATEST, percent=100, tag=tag)]
    with pytest.raises(api.InvalidArgument, match=fragment):
        _create(cloudrun_client, service)


def test_the_schema_documents_the_new_deployment_fields() -> None:
    properties = architecture_json_schema()["$defs"]["DeploymentSpec"]["properties"]
    assert properties["public"]["default"] is False
    assert properties["cpu_always_allocated"]["default"] is False
    assert (
        properties["concurrency"]["anyOf"][0]["minimum"],
        properties["concurrency"]["anyOf"][0]["maximum"],
    ) == (1, 1000)
