"""archdeploy's library: deploy a whole microservice architecture in parallel.

The names below are the public API. They load on first use (PEP 562), so a function
that imports one module of this package does not pay for the rest at cold start.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Architecture": "shared.architecture.model",
    "DeploymentSpec": "shared.architecture.model",
    "ServiceSpec": "shared.architecture.model",
    "MicroserviceArchitecture": "shared.architecture.model",
    "ContainerDeployer": "shared.deployer",
    "current_target": "shared.deployer",
    "Target": "shared.deployer",
    "DeploymentManager": "shared.manager",
    "ArchdeployError": "shared.errors",
    "ArchitectureError": "shared.errors",
    "BackendError": "shared.errors",
    "DeploymentError": "shared.errors",
    "DeployRequest": "shared.messages",
    "RunResult": "shared.messages",
    "load_architecture": "shared.architecture.loading",
    "parse_architecture": "shared.architecture.loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shared' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
