"""The architecture file's model: every field of the Go project's `services.yaml`.

Models are frozen: planning derives enriched copies with `model_copy(update=...)` and
never mutates what the caller loaded. Unknown keys are ignored by the models and
reported (with a did-you-mean) by `shared.architecture.loading`, which is also where files are
read and checked.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from shared.field_defaults import empty_list

# Injected into every deployed service's environment; a user value for these is replaced.
INJECTED_ENV = ("SERVICE_DIRECTOR_URL", "PROJECT_ID", "SERVICE_NAME", "DATAFLOW_NAME")


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Lookup(_Model):
    key: str
    method: Literal["env", "yaml", "db"] = "env"


class TopicMapping(_Model):
    name: str
    lookup: Lookup | None = None


class ServiceMapping(_Model):
    """A service named by a resource (a topic's producer, a subscription's consumer)."""

    name: str
    lookup: Lookup | None = None


class HealthCheck(_Model):
    port: int | None = Field(default=None, ge=1, le=65535)
    path: str = "/"


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(value: Any) -> Any:
    """`30s`, `2m`, `500ms`, `1h` or a plain number of seconds, as seconds."""
    if isinstance(value, str):
        text = value.strip()
        for unit in sorted(_UNITS, key=len, reverse=True):
            number = text.removesuffix(unit)
            if number != text:
                try:
                    return float(number) * _UNITS[unit]
                except ValueError:
                    break
        raise ValueError(f"{value!r} is not a duration: write e.g. 30s, 2m, 500ms or 1h")
    return value


Seconds = Annotated[float, BeforeValidator(_seconds), Field(ge=0, le=86400)]


class HttpCheck(_Model):
    """GET the staged revision's `path`; pass on `status` (and `contains` in the body)."""

    path: str = "/"
    status: int = Field(default=200, ge=100, le=599)
    contains: str | None = None
    timeout: Seconds = 10.0

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"a check's path must start with /: write /{path}")
        return path


class VerifyCheck(_Model):
    """One release check: an HTTP request, or a command given TARGET_URL in its env."""

    http: HttpCheck | None = None
    command: list[str] | None = Field(default=None, min_length=1)
    timeout: Seconds = 60.0  # the command's

    @model_validator(mode="after")
    def _one_kind(self) -> VerifyCheck:
        if (self.http is None) == (self.command is None):
            raise ValueError("give exactly one of `http: {path: ...}` or `command: [argv]`")
        return self

    @property
    def name(self) -> str:
        if self.http is not None:
            return f"http {self.http.path}"
        return "command " + " ".join(self.command or [])


MAX_TOTAL_SOAK = 420.0  # seconds of soak per promote, leaving 120 s of 540 for checks


class ReleaseSpec(_Model):
    """How a release moves traffic: all at once, or through percent steps with a soak."""

    strategy: Literal["all-at-once", "steps"] = "all-at-once"
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(default_factory=lambda: [100])
    soak: Seconds = 0.0

    @model_validator(mode="after")
    def _steps_rise_to_100(self) -> ReleaseSpec:
        steps = self.steps
        if not steps or steps[-1] != 100 or any(a >= b for a, b in itertools.pairwise(steps)):
            raise ValueError(
                f"steps must rise strictly and end at 100, e.g. [10, 50, 100]: {steps}"
            )
        return self

    @model_validator(mode="after")
    def _soaks_fit_one_promote(self) -> ReleaseSpec:
        # A service's steps run in one promote task, which on Google Cloud is one call
        # of the worker function: at most 540 s, checks included.
        total = self.soak * (len(self.percents) - 1)
        if total > MAX_TOTAL_SOAK:
            raise ValueError(
                f"soak {self.soak:g}s at each of {len(self.percents) - 1} steps is"
                f" {total:g}s: at most {MAX_TOTAL_SOAK:g}s in all fit one promote (a function"
                " call is cut at 540 s); use fewer steps or a shorter soak"
            )
        return self

    @property
    def percents(self) -> list[int]:
        return self.steps if self.strategy == "steps" else [100]


class SecretEnvVar(_Model):
    name: str
    value_from: str = Field(description="Secret Manager secret id (or its full resource name)")


class DeploymentSpec(_Model):
    source_path: str = ""
    buildable_module_path: str = ""
    config_templates: dict[str, str] = Field(default_factory=dict)
    image: str = ""
    image_repo: str = ""
    service_url: str = ""
    region: str = ""
    platform: str = ""
    cpu: str = ""
    memory: str = ""
    cpu_always_allocated: bool = Field(
        default=False,
        description="Cloud Run: CPU stays allocated between requests (instance-based billing);"
        " false: CPU only during requests (request-based billing), required when cpu < 1",
    )
    concurrency: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Cloud Run: most requests one instance serves at once (must be 1 when cpu"
        " < 1; unset: 80, or 1 when cpu < 1)",
    )
    public: bool = Field(
        default=False,
        description="Cloud Run: anyone may call the service (allUsers gets roles/run.invoker);"
        " false: only accounts archdeploy grants, e.g. services handed its URL",
    )
    local_port: int | None = Field(
        default=None,
        ge=1024,
        le=65535,
        description="Embedded mode: the loopback port of the service's stable URL (unset:"
        " one is chosen at the first deploy and kept)",
    )
    min_instances: int | None = Field(default=None, ge=0)
    max_instances: int | None = Field(default=None, ge=1)
    environment_vars: dict[str, str] = Field(default_factory=dict)
    secret_environment_vars: list[SecretEnvVar] = Field(default_factory=empty_list)
    verify: list[VerifyCheck] = Field(
        default_factory=empty_list,
        description="Releases: checks run against the staged revision's tagged URL"
        " (default: the service's health check)",
    )

    @model_validator(mode="after")
    def _scaling_bounds_ordered(self) -> DeploymentSpec:
        lo, hi = self.min_instances, self.max_instances
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_instances ({lo}) is greater than max_instances ({hi})")
        return self


class ServiceSpec(_Model):
    name: str = ""
    description: str = ""
    service_account: str = ""
    deployment: DeploymentSpec | None = None
    dependencies: list[str] = Field(default_factory=empty_list)
    health_check: HealthCheck | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ServiceManagerSpec(ServiceSpec):
    command_topic: TopicMapping | None = None
    completion_topic: TopicMapping | None = None


class _Resource(BaseModel):
    # Resources are provisioned by other tools; archdeploy only carries them, so their
    # less common fields pass through unchecked.
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str


class TopicResource(_Resource):
    producer_service: ServiceMapping | None = None


class SubscriptionResource(_Resource):
    topic: str = ""
    consumer_service: ServiceMapping | None = None
    ack_deadline: str = ""
    message_retention_duration: str = ""


class Resources(_Model):
    topics: list[TopicResource] = Field(default_factory=empty_list)
    subscriptions: list[SubscriptionResource] = Field(default_factory=empty_list)
    bigquery_datasets: list[_Resource] = Field(default_factory=empty_list)
    bigquery_tables: list[_Resource] = Field(default_factory=empty_list)
    gcs_buckets: list[_Resource] = Field(default_factory=empty_list)
    firestore_databases: list[_Resource] = Field(default_factory=empty_list)
    firestore_collections: list[_Resource] = Field(default_factory=empty_list)
    cloud_scheduler_jobs: list[_Resource] = Field(default_factory=empty_list)


class Lifecycle(_Model):
    strategy: Literal["permanent", "ephemeral"] = "permanent"
    keep_resources_on_test: bool = False


class Dataflow(_Model):
    name: str = ""
    description: str = ""
    services: dict[str, ServiceSpec] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    lifecycle: Lifecycle | None = None

    @model_validator(mode="after")
    def _service_names_default_to_keys(self) -> Dataflow:
        named = {
            key: spec if spec.name else spec.model_copy(update={"name": key})
            for key, spec in self.services.items()
        }
        object.__setattr__(self, "services", named)
        return self


class EnvironmentOverride(_Model):
    name: str | None = None
    project_id: str | None = None
    region: str | None = None
    location: str | None = None
    labels: dict[str, str] | None = None
    teardown_protection: bool | None = None


class Architecture(_Model):
    name: str = ""
    project_id: str
    region: str = ""
    location: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    teardown_protection: bool = False
    service_manager_spec: ServiceManagerSpec | None = None
    dataflows: dict[str, Dataflow] = Field(default_factory=dict)
    deployment_environments: dict[str, EnvironmentOverride] = Field(default_factory=dict)
    release: ReleaseSpec | None = Field(
        default=None, description="opt in to releases: stage, verify, then promote traffic"
    )
    # Written by older versions; accepted so such files keep loading, otherwise unused.
    topics: list[Any] = Field(default_factory=empty_list)
    subscriptions: list[Any] = Field(default_factory=empty_list)

    @model_validator(mode="after")
    def _dataflow_names_default_to_keys(self) -> Architecture:
        named = {
            key: flow if flow.name else flow.model_copy(update={"name": key})
            for key, flow in self.dataflows.items()
        }
        object.__setattr__(self, "dataflows", named)
        return self

    @property
    def director(self) -> ServiceManagerSpec | None:
        return self.service_manager_spec

    def services(self) -> Iterator[tuple[str | None, ServiceSpec]]:
        """Every service with the dataflow it belongs to (None for the director)."""
        if self.service_manager_spec is not None:
            yield None, self.service_manager_spec
        for flow_name, flow in self.dataflows.items():
            for spec in flow.services.values():
                yield flow_name, spec

    def find_service(self, name: str) -> tuple[str | None, ServiceSpec] | None:
        for flow_name, spec in self.services():
            if spec.name == name:
                return flow_name, spec
        return None

    def for_environment(self, environment: str | None) -> Architecture:
        """This architecture with the root fields of `deployment_environments[environment]`."""
        if not environment:
            return self
        override = self.deployment_environments[environment]
        changes = {k: v for k, v in override.model_dump().items() if v is not None}
        return self.model_copy(update=changes)


# The Go seed's type names, so code ported from it reads naturally.
MicroserviceArchitecture = Architecture
ResourceGroup = Dataflow
Environment = EnvironmentOverride
HealthCheckSpec = HealthCheck
LifecyclePolicy = Lifecycle
CloudResourcesSpec = Resources
TopicConfig = TopicResource
SubscriptionConfig = SubscriptionResource
