"""The architecture file: its model, the YAML reader, the checks, and loading a file.

The model's names are importable from here (`from shared.architecture import
Architecture`): every module of this package needs the model anyway.
"""

from shared.architecture.model import (
    Architecture,
    CloudResourcesSpec,
    Dataflow,
    DeploymentSpec,
    Environment,
    EnvironmentOverride,
    HealthCheck,
    HealthCheckSpec,
    Lifecycle,
    LifecyclePolicy,
    Lookup,
    MicroserviceArchitecture,
    ResourceGroup,
    Resources,
    SecretEnvVar,
    ServiceManagerSpec,
    ServiceMapping,
    ServiceSpec,
    SubscriptionConfig,
    SubscriptionResource,
    TopicConfig,
    TopicMapping,
    TopicResource,
)

__all__ = [
    "Architecture",
    "CloudResourcesSpec",
    "Dataflow",
    "DeploymentSpec",
    "Environment",
    "EnvironmentOverride",
    "HealthCheck",
    "HealthCheckSpec",
    "Lifecycle",
    "LifecyclePolicy",
    "Lookup",
    "MicroserviceArchitecture",
    "ResourceGroup",
    "Resources",
    "SecretEnvVar",
    "ServiceManagerSpec",
    "ServiceMapping",
    "ServiceSpec",
    "SubscriptionConfig",
    "SubscriptionResource",
    "TopicConfig",
    "TopicMapping",
    "TopicResource",
]
