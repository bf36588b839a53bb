"""The public API is what `shared.__all__` says, and importing `shared` loads none of it."""

from __future__ import annotations

import subprocess
import sys

import shared


def test_the_public_names_are_pinned() -> None:
    assert shared.__all__ == [
        "ArchdeployError",
        "Architecture",
        "ArchitectureError",
        "BackendError",
        "ContainerDeployer",
        "DeployRequest",
        "DeploymentError",
        "DeploymentManager",
        "DeploymentSpec",
        "MicroserviceArchitecture",
        "RunResult",
        "ServiceSpec",
        "Target",
        "current_target",
        "load_architecture",
        "parse_architecture",
    ]


def test_the_seed_type_names_are_the_models() -> None:
    from shared import architecture

    assert shared.MicroserviceArchitecture is shared.Architecture
    assert architecture.ResourceGroup is architecture.Dataflow
    assert architecture.HealthCheckSpec is architecture.HealthCheck
    assert architecture.TopicConfig is architecture.TopicResource


def test_every_public_name_resolves() -> None:
    for name in shared.__all__:
        assert getattr(shared, name) is not None, name


def test_importing_the_package_loads_no_submodule_and_no_cloud_sdk() -> None:
    code = (
        "import sys, shared; "
        "print(sorted(m for m in sys.modules if m.startswith(('shared.', 'google.cloud.'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
