"""Cloud Run v2 service resources built from a `DeploymentSpec`: one container, its env and
secrets, CPU and memory, probes, scaling, labels, and the config fingerprint annotation."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from shared.adapters.gcp.cloud_run import FINGERPRINT_ANNOTATION
from shared.architecture.model import DeploymentSpec
from shared.deployer import Target

RUN_LABEL = "archdeploy-run"
_LABEL_MAX = 63
_LABEL_BAD = re.compile(r"[^a-z0-9_-]")


def sanitize_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Labels that Google accepts: lowercase [a-z0-9_-], at most 63 characters, keys
    starting with a letter. Keys that end up empty are dropped."""
    clean: dict[str, str] = {}
    for key, value in sorted(labels.items()):
        new_key = _label_text(key)
        if new_key and not new_key[0].isalpha():
            new_key = ("l" + new_key)[:_LABEL_MAX]
        if new_key:
            clean[new_key] = _label_text(value)
    return clean


def _label_text(text: str) -> str:
    return _LABEL_BAD.sub("-", text.lower())[:_LABEL_MAX]


def service_resource(
    spec: DeploymentSpec, *, service_account: str, target: Target, fingerprint: str = ""
) -> Any:
    """The `run_v2.Service` for `spec`: one container, env sorted by name, secrets as refs,
    all traffic on the latest revision, `fingerprint` as an annotation."""
    from google.cloud import run_v2

    container = run_v2.Container(image=spec.image, env=_env(spec))
    limits = {key: value for key, value in (("cpu", spec.cpu), ("memory", spec.memory)) if value}
    fractional = cpu_below_one(spec.cpu)
    # Once `resources` is set, an unset cpu_idle means CPU always allocated (instance-based
    # billing): ResourceRequirements.cpu_idle, "the caller must explicitly set this field to
    # true to preserve the default behavior". So it is always sent, from the file.
    container.resources = run_v2.ResourceRequirements(
        limits=limits, cpu_idle=not spec.cpu_always_allocated
    )
    check = target.health_check
    if check is not None and check.port is not None:
        container.ports = [run_v2.ContainerPort(container_port=check.port)]
    if check is not None:
        probe = run_v2.HTTPGetAction(path=check.path, port=check.port or 0)
        container.startup_probe = run_v2.Probe(http_get=probe)
    annotations = {FINGERPRINT_ANNOTATION: fingerprint} if fingerprint else {}
    # run/docs/configuring/services/cpu, "CPU below 1": concurrency 1, first generation.
    generation = run_v2.ExecutionEnvironment.EXECUTION_ENVIRONMENT_GEN1 if fractional else 0
    template = run_v2.RevisionTemplate(
        containers=[container],
        service_account=service_account,
        annotations=annotations,
        max_instance_request_concurrency=1 if fractional else (spec.concurrency or 0),
        execution_environment=generation,
    )
    if spec.min_instances is not None or spec.max_instances is not None:
        template.scaling = run_v2.RevisionScaling(
            min_instance_count=spec.min_instances or 0,
            max_instance_count=spec.max_instances or 0,
        )
    labels = dict(target.labels)
    if target.run_id:
        labels[RUN_LABEL] = target.run_id
    latest = run_v2.TrafficTarget(
        type_=run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST, percent=100
    )
    return run_v2.Service(
        labels=sanitize_labels(labels), annotations=annotations, template=template, traffic=[latest]
    )


def cpu_below_one(cpu: str) -> bool:
    """Whether a (validated) cpu quantity is a fraction of one vCPU."""
    if not cpu:
        return False
    value = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return value < 1


def _env(spec: DeploymentSpec) -> list[Any]:
    from google.cloud import run_v2

    # Secrets travel as references that Cloud Run resolves; their values never leave
    # Secret Manager. A secret wins over a plain variable of the same name.
    secret_names = {secret.name for secret in spec.secret_environment_vars}
    plain = [
        run_v2.EnvVar(name=key, value=value)
        for key, value in sorted(spec.environment_vars.items())
        if key not in secret_names
    ]
    secrets = [
        run_v2.EnvVar(
            name=secret.name,
            value_source=run_v2.EnvVarSource(secret_key_ref=_secret_ref(secret.value_from)),
        )
        for secret in sorted(spec.secret_environment_vars, key=lambda s: s.name)
    ]
    return plain + secrets


def _secret_ref(value_from: str) -> Any:
    """A secret id or resource name; a `.../versions/N` name pins that version."""
    from google.cloud import run_v2

    secret, _, version = value_from.partition("/versions/")
    return run_v2.SecretKeySelector(secret=secret, version=version or "latest")
