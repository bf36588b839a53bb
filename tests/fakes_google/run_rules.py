"""What Cloud Run Admin API v2 refuses in a service, written down independently of archdeploy.

Each rule cites the documentation it comes from (see /work/notes/gcp-rules.md for the
quotes). `service_problems` returns (field path, description) pairs, the shape of the
`google.rpc.BadRequest.fieldViolations` Cloud Run answers INVALID_ARGUMENT with; the fake
server turns them into that status.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from google.cloud import run_v2

_LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
_BY_REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
_GEN1 = run_v2.ExecutionEnvironment.EXECUTION_ENVIRONMENT_GEN1
_MI = 1024 * 1024
_GI = 1024 * _MI
_UNITS = {"": 1, "k": 1000, "M": 10**6, "G": 10**9, "Ki": 1024, "Mi": _MI, "Gi": _GI}
_TAG = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")

# https://docs.cloud.google.com/run/docs/configuring/services/cpu, "CPU and memory" table:
# vCPU -> (min memory, max memory). Values above 1 are integers ("Values greater than 1
# must be integer values"); only these appear.
_WHOLE_CPU = {
    Decimal(1): (128 * _MI, 4 * _GI),
    Decimal(2): (128 * _MI, 8 * _GI),
    Decimal(4): (2 * _GI, 16 * _GI),
    Decimal(6): (4 * _GI, 24 * _GI),
    Decimal(8): (4 * _GI, 32 * _GI),
}


def parse_cpu(text: str) -> Decimal | None:
    """vCPUs of a Kubernetes quantity ("1", "0.5", "500m"); None when unparseable."""
    try:
        value = Decimal(text[:-1]) / 1000 if text.endswith("m") else Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def parse_memory(text: str) -> int | None:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|k|M|G|)", text)
    if match is None:
        return None
    return int(Decimal(match[1]) * _UNITS[match[2]])


def container_problems(container: Any, template: Any, path: str) -> list[tuple[str, str]]:
    """CPU, memory, billing and concurrency rules for one container of `template`."""
    resources = container.resources
    field = f"{path}.resources.limits"
    limits = dict(resources.limits)
    # v2 ResourceRequirements.limits: "Only `memory`, `cpu` and `nvidia.com/gpu` keys in
    # the map are supported."
    unknown = sorted(set(limits) - {"cpu", "memory", "nvidia.com/gpu"})
    if unknown:
        return [(field, f"unsupported resource limit keys {unknown}")]
    cpu = parse_cpu(limits.get("cpu", "1"))  # default 1 vCPU (memory-limits page)
    memory = parse_memory(limits.get("memory", "512Mi"))  # default 512 MiB
    if cpu is None:
        return [(field, f"cpu {limits['cpu']!r} is not a quantity")]
    if memory is None:
        return [(field, f"memory {limits['memory']!r} is not a quantity")]
    problems = _cpu_memory_problems(cpu, memory, field)
    if cpu < 1:
        problems += _fractional_cpu_problems(resources, template, path)
    return problems


def _cpu_memory_problems(cpu: Decimal, memory: int, field: str) -> list[tuple[str, str]]:
    # CPU page: fractional CPU "from 0.08 up to 1, in steps of 0.001"; maximum 8.
    if cpu < 1:
        if cpu < Decimal("0.08") or cpu.as_tuple().exponent < -3:  # type: ignore[operator]
            return [(field, f"cpu {cpu} must be between 0.08 and 1 in steps of 0.001")]
        # CPU page, "CPU below 1": "A minimum of 0.5 vCPU is needed to set a memory limit
        # greater than 512MiB. A minimum of 1 vCPU is needed to set a memory limit greater
        # than 1GiB."
        if memory > _GI or (cpu < Decimal("0.5") and memory > 512 * _MI):
            return [(field, f"memory {memory // _MI}Mi needs more than {cpu} vCPU")]
        return []
    bounds = _WHOLE_CPU.get(cpu)
    if bounds is None:
        return [(field, f"cpu {cpu}: values above 1 must be 1, 2, 4, 6 or 8")]
    low, high = bounds  # memory page: minimum memory 128 MiB, maximum 32 GiB
    if not low <= memory <= high:
        return [(field, f"memory must be {low // _MI}Mi..{high // _MI}Mi with {cpu} vCPU")]
    return []


def _fractional_cpu_problems(resources: Any, template: Any, path: str) -> list[tuple[str, str]]:
    # CPU page, "CPU below 1": "Maximum concurrency must be set to 1" and "The billing
    # settings must be set to request-based billing" (v2: cpu_idle=true; an unset bool is
    # false once `resources` is set, ResourceRequirements.cpu_idle doc).
    problems = []
    if not resources.cpu_idle:
        problems.append((f"{path}.resources.cpu_idle", "cpu < 1 requires request-based billing"))
    if template.max_instance_request_concurrency > 1:
        problems.append(
            ("service.template.max_instance_request_concurrency", "cpu < 1 requires concurrency 1")
        )
    return problems


def template_problems(template: Any) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    # about-concurrency page: "you can increase this to a maximum of 1000".
    concurrency = template.max_instance_request_concurrency
    if not 0 <= concurrency <= 1000:
        problems.append(
            ("service.template.max_instance_request_concurrency", f"{concurrency} not in 1..1000")
        )
    for i, container in enumerate(template.containers):
        problems += container_problems(container, template, f"service.template.containers[{i}]")
    return problems


def traffic_problems(service_id: str, targets: list[Any], revisions: dict[str, Any]) -> str:
    """Why Cloud Run would refuse `targets` (the v2 TrafficTarget list), or "".

    `revisions` are the service's revisions by id, including the one this request creates.
    A LATEST target and a REVISION target that resolve to the same revision are both
    allowed, their percents adding up: knative's TrafficTarget makes no rule against it,
    and `gcloud run services update-traffic --to-revisions=LATEST=10` is documented beside
    named revisions (docs.cloud.google.com/sdk/gcloud/reference/run/services/update-traffic).
    """
    # knative serving API specification, TrafficTarget.percent: "Min: 0, Max: 100" and
    # "All percent values in traffic MUST sum to 100" (github.com/knative/specs).
    total = sum(t.percent for t in targets)
    if total != 100:
        return f"traffic percentages add up to {total}, not 100"
    tags: set[str] = set()
    for target in targets:
        problem = _target_problem(service_id, target, tags, revisions)
        if problem:
            return problem
    return ""


def _target_problem(service_id: str, target: Any, tags: set[str], revisions: dict[str, Any]) -> str:
    if not 0 <= target.percent <= 100:
        return f"traffic percent {target.percent} is not in 0..100"
    # knative TrafficTarget.latestRevision: "MUST be true if revisionName is empty, and it
    # MUST be false when revisionName is non-empty".
    if target.type_ == _LATEST and target.revision:
        return "a LATEST traffic target must not name a revision"
    if target.tag:
        problem = _tag_problem(service_id, target.tag, tags)
        if problem:
            return problem
        tags.add(target.tag)
    if target.type_ != _BY_REVISION:
        return ""
    # v2 Service.traffic (google/cloud/run/v2/service.proto): "Specifies how to distribute
    # traffic over a collection of Revisions belonging to the Service".
    revision = revisions.get(target.revision)
    if revision is None:
        return f"Revision '{target.revision}' referenced in traffic not found"
    if not revision.ready:
        return f"Revision '{target.revision}' referenced in traffic is not ready"
    return ""


def _tag_problem(service_id: str, tag: str, seen: set[str]) -> str:
    # v2 TrafficTarget.tag: "Indicates a string to be part of the URI to exclusively
    # reference this target" (cloud.google.com/ruby/docs/reference/google-cloud-run-v2/
    # latest/Google-Cloud-Run-V2-TrafficTarget); a tagged revision's URL is
    # https://TAG---SERVICE-HASH-REGION.a.run.app (cloud.google.com/run/docs/
    # rollouts-rollbacks-traffic-migration, tags), so the tag is the start of a
    # DNS label (RFC 1035: a letter first, then letters, digits, hyphens, no hyphen last).
    # Observed limit: "Combined traffic tag and service name cannot exceed 46 characters"
    # (PolicyEngine/policyengine-api#3729; also firebase and gcloud deploy logs).
    # One tag names one URL, so it cannot be given twice (knative: the tag's dedicated URL
    # references "this target exclusively").
    if tag in seen:
        return f"traffic tag '{tag}' is used twice"
    if not _TAG.fullmatch(tag):
        return (
            f"traffic tag '{tag}' must be lowercase letters, digits and hyphens, starting "
            "with a letter and not ending with a hyphen"
        )
    if len(tag) + len(service_id) > 46:
        return (
            f"traffic tag '{tag}' and service name '{service_id}' together are too long. "
            "Combined traffic tag and service name cannot exceed 46 characters."
        )
    return ""


def revision_name_problem(service_id: str, name: str) -> str:
    """Why Cloud Run would refuse `name` as `template.revision`, or ""."""
    # gcloud run deploy --revision-suffix (docs.cloud.google.com/sdk/gcloud/reference/run/
    # deploy): "Revision names always start with the service name automatically. For
    # example, specifying [--revision-suffix=v1] for a service named 'helloworld', would
    # lead to a revision named 'helloworld-v1'." v2 RevisionTemplate.revision: "The unique
    # name for the revision. If this field is omitted, it will be automatically generated
    # based on the Service name." The name is a DNS label (RFC 1035, at most 63).
    if not name.startswith(f"{service_id}-"):
        return f"revision name '{name}' must begin with the service name: '{service_id}-'"
    if len(name) > 63 or not _TAG.fullmatch(name):
        return (
            f"revision name '{name}' must be lowercase letters, digits and hyphens, "
            "not ending with a hyphen, at most 63 characters"
        )
    return ""
