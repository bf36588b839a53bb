"""The container deployer port, as the Go seed's `ContainerDeployer` defined it.

Implementations: `shared.adapters.local_deployer.LocalDeployer` (embedded default: a local
OCI image store and local processes) and `shared.adapters.gcp_deployer.GcpDeployer`
(Cloud Build + Cloud Run). Tests use `tests.fakes.FakeDeployer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from shared.architecture import DeploymentSpec, HealthCheck


@dataclass(frozen=True)
class Target:
    """Where and for whom a build or deploy happens; everything but the service's own spec."""

    project_id: str = ""
    region: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    run_id: str = ""
    task_id: str = ""
    health_check: HealthCheck | None = None


@runtime_checkable
class ContainerDeployer(Protocol):
    """Builds container images and runs them as services.

    Every method raises `shared.errors.BackendError` (with `retryable` set for transient
    causes such as 429 or 503) when the backend refuses or fails; the message names the
    service and what the backend answered.
    """

    def build(
        self, service_name: str, spec: DeploymentSpec, *, target: Target | None = None
    ) -> str:
        """Build the service's image from `spec.source_path` and return its URI.

        The URI is pinned by digest where the builder reports one. Building the same
        source twice yields the same image where the builder is reproducible.
        """
        ...

    def deploy_service(
        self,
        service_name: str,
        service_account_email: str,
        spec: DeploymentSpec,
        *,
        target: Target | None = None,
    ) -> str:
        """Deploy `spec.image` as `service_name` and return its URL once it is healthy.

        Creates the service or replaces its running version. `spec` is used as given:
        environment enrichment happens before, in planning.
        """
        ...

    def build_and_deploy(
        self,
        service_name: str,
        service_account_email: str,
        spec: DeploymentSpec,
        *,
        target: Target | None = None,
    ) -> str:
        """`build`, then `deploy_service` with the built image; returns the URL."""
        ...

    def teardown(self, service_name: str, *, target: Target | None = None) -> None:
        """Stop and delete the service. Idempotent: a service that is not there is fine."""
        ...
