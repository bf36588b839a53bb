"""The container deployer port, as the Go seed's `ContainerDeployer` defined it.

Implementations: `shared.adapters.local.deployer.LocalDeployer` (embedded default: a local
OCI image store and local processes) and `shared.adapters.gcp.deployer.GcpDeployer`
(Cloud Build + Cloud Run). Tests use `tests.fakes.FakeDeployer`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol, TypeGuard, runtime_checkable

from shared.architecture.model import DeploymentSpec, HealthCheck


@dataclass(frozen=True)
class Target:
    """Where and for whom a build or deploy happens; everything but the service's own spec."""

    project_id: str = ""
    region: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    run_id: str = ""
    task_id: str = ""
    health_check: HealthCheck | None = None
    no_cache: bool = False


# The task being worked on. The seed's deployer methods take no `target`, so a deployer
# written to that contract works unchanged; ours read where and for whom from here.
_CURRENT_TARGET: ContextVar[Target | None] = ContextVar("archdeploy_target", default=None)


def current_target() -> Target:
    """The target of the build or deploy this thread is doing (empty outside a task)."""
    return _CURRENT_TARGET.get() or Target()


@contextmanager
def targeting(target: Target) -> Iterator[None]:
    """Run the enclosed deployer calls for `target` (see `current_target`)."""
    token = _CURRENT_TARGET.set(target)
    try:
        yield
    finally:
        _CURRENT_TARGET.reset(token)


@runtime_checkable
class ContainerDeployer(Protocol):
    """Builds container images and runs them as services: the Go seed's four methods.

    The core calls exactly these signatures, with no keyword arguments, so a deployer
    written to the seed's contract works unchanged; the task's `Target` is available to
    deployers that want it through `current_target()`. A method that raises has failed
    that service: the error is recorded on the task. Ours raise
    `shared.errors.BackendError` (with `retryable` set for transient causes such as 429
    or 503), naming the service and what the backend answered.
    """

    def build(self, service_name: str, spec: DeploymentSpec) -> str:
        """Build the service's image from `spec.source_path` and return its URI.

        The URI is pinned by digest where the builder reports one. Building the same
        source twice yields the same image where the builder is reproducible.
        """
        ...

    def deploy_service(
        self, service_name: str, service_account_email: str, spec: DeploymentSpec
    ) -> str:
        """Deploy `spec.image` as `service_name` and return its URL once it is healthy.

        Creates the service or replaces its running version. `spec` is used as given:
        environment enrichment happens before, in planning.
        """
        ...

    def build_and_deploy(
        self, service_name: str, service_account_email: str, spec: DeploymentSpec
    ) -> str:
        """`build`, then `deploy_service` with the built image; returns the URL."""
        ...

    def teardown(self, service_name: str) -> None:
        """Stop and delete the service. Idempotent: a service that is not there is fine."""
        ...


def build_then_deploy(
    deployer: ContainerDeployer,
    service_name: str,
    service_account_email: str,
    spec: DeploymentSpec,
    *,
    target: Target | None = None,
) -> str:
    """What every deployer's `build_and_deploy` does: build, then deploy that image."""
    with targeting(target or current_target()):
        image = deployer.build(service_name, spec)
        built = spec.model_copy(update={"image": image})
        return deployer.deploy_service(service_name, service_account_email, built)


@dataclass(frozen=True)
class Deployed:
    """What serves a service now, as its deployer recorded it."""

    url: str
    image: str
    fingerprint: str  # `config_fingerprint` of what was deployed
    revision: str = (
        ""  # what a rollback returns to (a Cloud Run revision; locally a saved deployment)
    )


def config_fingerprint(
    service_account_email: str, spec: DeploymentSpec, health_check: HealthCheck | None = None
) -> str:
    """A digest of everything a deploy sets: equal fingerprints mean nothing would change."""
    effective = {
        "image": spec.image,
        "service_account": service_account_email,
        "env": sorted(spec.environment_vars.items()),
        "secrets": sorted((s.name, s.value_from) for s in spec.secret_environment_vars),
        "cpu": spec.cpu,
        "memory": spec.memory,
        "min": spec.min_instances,
        "max": spec.max_instances,
        "region": spec.region,
        "health": health_check.model_dump() if health_check else None,
    }
    if spec.local_port is not None:  # the local stable port: a new one rebinds the service
        effective["local_port"] = spec.local_port
    canonical = json.dumps(effective, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# A deployer's optional abilities: each a small protocol, found by `isinstance`.


@runtime_checkable
class BuildSubmitter(Protocol):
    """Builds that are submitted rather than awaited, and can be cancelled.

    A build can outlast a function's 540 s timeout, so on Google Cloud the worker submits
    it and its outcome arrives later as a build event (`Policy.async_builds`)."""

    def submit_build(self, service_name: str, spec: DeploymentSpec, *, target: Target) -> str:
        """Start the build and return its id without waiting for it."""
        ...

    def cancel_build(self, build_id: str) -> None:
        """Cancel a submitted build (best effort: a build that ended already is fine)."""
        ...


@runtime_checkable
class IncrementalDeployer(Protocol):
    """What a deployer offers so repeated runs skip unchanged work and can roll back."""

    def cached_image(
        self, service_name: str, spec: DeploymentSpec, *, target: Target | None = None
    ) -> str | None:
        """The image already built from exactly this build input, or None. No side effect."""
        ...

    def deployed(self, service_name: str, *, target: Target | None = None) -> Deployed | None:
        """What serves the service now (and is healthy), or None. No side effect."""
        ...

    def rollback(self, service_name: str, revision: str, *, target: Target | None = None) -> str:
        """Serve `revision` (a `Deployed.revision`) again; returns the URL."""
        ...


@dataclass(frozen=True)
class Staged:
    """A revision deployed beside what serves, reachable only through its tag's own URL."""

    revision: str
    tag: str
    url: str  # the tag's URL: reaches this revision only
    # The service did not exist before, so its first revision had to take all traffic
    # (Cloud Run cannot create a service that serves nothing); undoing it is a teardown.
    created: bool = False


@dataclass(frozen=True)
class Traffic:
    """Which revisions serve a service's stable URL, by percent, and where its tags point."""

    url: str  # the stable URL
    percents: dict[str, int]  # revision -> percent; the percents sum to 100
    tags: dict[str, str] = field(default_factory=dict)  # tag -> revision
    tag_urls: dict[str, str] = field(default_factory=dict)  # tag -> the tag's URL


@runtime_checkable
class TrafficDeployer(Protocol):
    """Revisions, tags and traffic, as Cloud Run has them: what a release is built on.

    Locally the front end gives each tag a port of its own and splits a stable URL's
    requests by percent; on Google Cloud these are Cloud Run's own tags and traffic
    targets pinned to revisions. Every method is idempotent, as tasks may run twice.
    """

    def stage(
        self,
        service_name: str,
        service_account_email: str,
        spec: DeploymentSpec,
        *,
        tag: str,
        target: Target | None = None,
    ) -> Staged:
        """Deploy `spec` as a new revision with no traffic, tagged `tag`; once healthy.

        Staging the same configuration under the same tag again returns the same
        revision. A tag is lowercase letters, digits and `-`, starting with a letter."""
        ...

    def traffic(self, service_name: str, *, target: Target | None = None) -> Traffic | None:
        """The service's traffic and tags now, or None if it does not exist."""
        ...

    def set_traffic(
        self, service_name: str, percents: dict[str, int], *, target: Target | None = None
    ) -> Traffic:
        """Serve the stable URL from these revisions by percent (summing to 100).

        Tags are kept. Raises `BackendError` naming the revision or sum it refuses."""
        ...

    def untag(self, service_name: str, tag: str, *, target: Target | None = None) -> None:
        """Remove `tag` (and its URL). A tag that is not there is fine."""
        ...


_KNOWN_ABILITIES: dict[tuple[type, type], bool] = {}


def _can(deployer: object, ability: type) -> bool:
    """`isinstance(deployer, ability)` for the ability protocols above, decided once per
    deployer class: a runtime-checkable protocol's isinstance walks every member on every
    call, which the worker paid up to three times per task (docs/performance.md)."""
    key = (type(deployer), ability)
    known = _KNOWN_ABILITIES.get(key)
    if known is None:
        known = _KNOWN_ABILITIES[key] = isinstance(deployer, ability)
    return known


def is_incremental(deployer: object) -> TypeGuard[IncrementalDeployer]:
    return _can(deployer, IncrementalDeployer)


def submits_builds(deployer: object) -> TypeGuard[BuildSubmitter]:
    return _can(deployer, BuildSubmitter)


def moves_traffic(deployer: object) -> TypeGuard[TrafficDeployer]:
    return _can(deployer, TrafficDeployer)
