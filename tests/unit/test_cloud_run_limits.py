"""Cloud Run's CPU and memory rules, refused by validation before anything is built.

Rules from "Configure CPU limits for services"
(https://cloud.google.com/run/docs/configuring/services/cpu) and "Configure memory limits"
(https://cloud.google.com/run/docs/configuring/services/memory-limits); the same rules are
enforced, written independently, by the fake Cloud Run (tests/fakes_google/run_rules.py).
"""

from __future__ import annotations

import textwrap

import pytest

from shared.architecture.loading import parse_architecture
from shared.errors import ArchitectureError

FLOW = "dataflows.orders.services.ingest.deployment"


def service(deployment: str) -> str:
    body = textwrap.indent(textwrap.dedent(deployment).strip("\n"), " " * 10)
    return (
        "project_id: acme-dev\n"
        "dataflows:\n"
        "  orders:\n"
        "    services:\n"
        "      ingest:\n"
        "        deployment:\n"
        f"{body}\n"
    )


@pytest.mark.parametrize(
    "deployment",
    [
        'cpu: "0.5"',  # concurrency 1 and request-based billing are set by the deployer
        'cpu: "0.5"\nmemory: 1Gi\nconcurrency: 1',
        'cpu: "0.25"\nmemory: 512Mi',
        'cpu: "0.08"\nmemory: 128Mi',
        'cpu: "1"\nmemory: 4Gi\nconcurrency: 1000\ncpu_always_allocated: true',
        'cpu: "4"\nmemory: 2Gi',
        'cpu: "8"\nmemory: 32Gi',
        'cpu: "2000m"\nmemory: 8Gi',
        "memory: 4Gi",  # cpu unset: 1 vCPU
        "public: true",
    ],
)
def test_combinations_cloud_run_accepts_pass(deployment: str) -> None:
    parse_architecture(service(deployment))


@pytest.mark.parametrize(
    ("deployment", "field", "line", "fix"),
    [
        # "A minimum of 0.5 vCPU is needed to set a memory limit greater than 512MiB"
        ('cpu: "0.25"\nmemory: 1Gi', "memory", 8, 'cpu: "0.5"'),
        # "A minimum of 1 vCPU is needed to set a memory limit greater than 1GiB"
        ('cpu: "0.5"\nmemory: 2Gi', "memory", 8, 'cpu: "1"'),
        # cpu < 1: "The billing settings must be set to request-based billing"
        ('cpu: "0.5"\ncpu_always_allocated: true', "cpu_always_allocated", 8, "remove"),
        # cpu < 1: "Maximum concurrency must be set to 1"
        ('cpu: "0.5"\nconcurrency: 80', "concurrency", 8, "concurrency: 1"),
        # "Values greater than 1 must be integer values" (1, 2, 4, 6, 8 in the table)
        ('cpu: "3"', "cpu", 7, '"4"'),
        ('cpu: "1.5"', "cpu", 7, '"2"'),
        ('cpu: "0.05"', "cpu", 7, "0.5"),
        ('cpu: "0.0005"', "cpu", 7, "0.5"),
        # 4 vCPU: 2 GiB to 16 GiB; memory unset is 512Mi, so the cpu is pointed at
        ('cpu: "4"', "cpu", 7, "memory: 2Gi"),
        ('cpu: "6"\nmemory: 2Gi', "memory", 8, "memory: 4Gi"),
        # 1 vCPU: up to 4 GiB
        ('cpu: "1"\nmemory: 8Gi', "memory", 8, 'cpu: "2"'),
        ('cpu: "8"\nmemory: 64Gi', "memory", 8, "32Gi"),
    ],
)
def test_combinations_cloud_run_refuses_name_field_line_and_fix(
    deployment: str, field: str, line: int, fix: str
) -> None:
    with pytest.raises(ArchitectureError) as raised:
        parse_architecture(service(deployment))

    found = [p for p in raised.value.problems if p.path == f"{FLOW}.{field}"]
    assert len(found) == 1, raised.value.problems
    assert found[0].line == line
    assert fix in found[0].fix


@pytest.mark.parametrize("value", ["0", "1001", "-1"])
def test_concurrency_is_between_1_and_1000(value: str) -> None:
    with pytest.raises(ArchitectureError) as raised:
        parse_architecture(service(f"concurrency: {value}"))
    assert [p.path for p in raised.value.problems] == [f"{FLOW}.concurrency"]
