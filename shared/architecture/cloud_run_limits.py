"""Which cpu, memory, billing and concurrency combinations Cloud Run accepts.

Checked before anything is built, so a combination Cloud Run would refuse at deploy time
(after every image was built) is reported with its field, line and fix. The rules, from
"Configure CPU limits for services" (https://cloud.google.com/run/docs/configuring/services/cpu)
and "Configure memory limits" (https://cloud.google.com/run/docs/configuring/services/memory-limits):

    vCPU      memory           notes
    0.08-<1   up to 512Mi      above 512Mi needs >= 0.5 vCPU, above 1Gi needs >= 1 vCPU;
              (0.5+: up to 1Gi) cpu < 1 needs request-based billing and concurrency 1
    1         128Mi to 4Gi
    2         128Mi to 8Gi     values above 1 are integers: 1, 2, 4, 6 or 8
    4         2Gi to 16Gi
    6         4Gi to 24Gi
    8         4Gi to 32Gi

Unset cpu is 1 vCPU and unset memory 512Mi (Cloud Run's defaults). Fractions below 1 go in
steps of 0.001.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from shared.architecture.model import DeploymentSpec

_MI = 1024**2
_GI = 1024**3
_UNITS = {"": 1, "k": 1000, "M": 10**6, "G": 10**9, "T": 10**12}
_UNITS.update({"Ki": 1024, "Mi": _MI, "Gi": _GI, "Ti": 1024**4})
WHOLE_CPUS = {1: (128 * _MI, 4 * _GI), 2: (128 * _MI, 8 * _GI), 4: (2 * _GI, 16 * _GI)}
WHOLE_CPUS.update({6: (4 * _GI, 24 * _GI), 8: (4 * _GI, 32 * _GI)})
_MIN_CPU = Decimal("0.08")


# A release tags each staged revision `rel-` and 10 hex digits of its run id (see
# `shared.core.release_plan.release_tag`), and Cloud Run refuses a traffic tag whose
# length plus the service name's exceeds 46 ("Combined traffic tag and service name
# cannot exceed 46 characters", the error Cloud Run gives; the fake enforces it).
RELEASE_TAG_LENGTH = 14
MAX_RELEASED_NAME = 46 - RELEASE_TAG_LENGTH


def release_name_problem(name: str) -> str | None:
    """Why a service of this name cannot be released on Cloud Run, or None."""
    if len(name) <= MAX_RELEASED_NAME:
        return None
    return (
        f"`{name}` is {len(name)} characters: a release tags its revisions with"
        f" {RELEASE_TAG_LENGTH} more, and Cloud Run refuses a tag and service name over 46"
    )


@dataclass(frozen=True)
class LimitProblem:
    field: str  # the deployment field to point at
    message: str
    fix: str


def vcpus(cpu: str) -> Decimal | None:
    """vCPUs of a quantity such as "1", "0.5" or "500m"; None when it is not one."""
    try:
        value = Decimal(cpu[:-1]) / 1000 if cpu.endswith("m") else Decimal(cpu)
    except InvalidOperation:
        return None
    return value if value.is_finite() and value > 0 else None


def memory_bytes(memory: str) -> int | None:
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)([KMGT]i|[kMGT]|)", memory)
    return int(Decimal(match[1]) * _UNITS[match[2]]) if match else None


def _mi(size: int) -> str:
    return f"{size // _GI}Gi" if size % _GI == 0 else f"{size // _MI}Mi"


def limit_problems(spec: DeploymentSpec) -> list[LimitProblem]:
    """What Cloud Run would refuse in `spec`'s cpu, memory, billing and concurrency."""
    cpu = vcpus(spec.cpu) if spec.cpu else Decimal(1)
    memory = memory_bytes(spec.memory) if spec.memory else 512 * _MI
    if cpu is None or memory is None:
        return []  # the format checks report these
    if cpu < 1:
        return _fractional(spec, cpu, memory)
    if cpu != cpu.to_integral_value() or int(cpu) not in WHOLE_CPUS:
        return [
            LimitProblem(
                "cpu",
                f"cpu `{spec.cpu}`: Cloud Run takes whole vCPUs above 1 only as 1, 2, 4, 6 or 8",
                'use `cpu: "1"`, `"2"`, `"4"`, `"6"` or `"8"` (or a fraction below 1)',
            )
        ]
    low, high = WHOLE_CPUS[int(cpu)]
    if memory < low:
        return [
            LimitProblem(
                "memory" if spec.memory else "cpu",  # unset memory is 512Mi
                f"{cpu} vCPU needs at least {_mi(low)} of memory, not {_mi(memory)}",
                f"set `memory: {_mi(low)}` or more, or use fewer CPUs",
            )
        ]
    if memory > high:
        need = next((n for n, (_, top) in sorted(WHOLE_CPUS.items()) if top >= memory), None)
        fix = f'set `cpu: "{need}"`' if need else "at most 32Gi: lower `memory`"
        return [
            LimitProblem(
                "memory",
                f"memory {_mi(memory)} is more than {cpu} vCPU allows ({_mi(high)})",
                f"{fix}, or lower `memory` to {_mi(high)}",
            )
        ]
    return []


def _fractional(spec: DeploymentSpec, cpu: Decimal, memory: int) -> list[LimitProblem]:
    problems = []
    if cpu < _MIN_CPU or cpu.as_tuple().exponent < -3:  # type: ignore[operator]
        problems.append(
            LimitProblem(
                "cpu",
                f"cpu `{spec.cpu}`: fractions of a vCPU go from 0.08 to 1 in steps of 0.001",
                'e.g. `cpu: "0.5"`, `"0.25"` or `"1"`',
            )
        )
    if memory > _GI or (cpu < Decimal("0.5") and memory > 512 * _MI):
        need = "1" if memory > _GI else "0.5"
        problems.append(
            LimitProblem(
                "memory",
                f"memory {_mi(memory)} needs at least {need} vCPU, and cpu is {cpu}",
                f'set `cpu: "{need}"` or more, or lower `memory` to '
                f"{'1Gi' if cpu >= Decimal('0.5') else '512Mi'}",
            )
        )
    if spec.cpu_always_allocated:
        problems.append(
            LimitProblem(
                "cpu_always_allocated",
                f"cpu {cpu} (below 1) requires request-based billing: CPU only during requests",
                'remove `cpu_always_allocated: true`, or set `cpu: "1"` or more',
            )
        )
    if spec.concurrency is not None and spec.concurrency > 1:
        problems.append(
            LimitProblem(
                "concurrency",
                f"cpu {cpu} (below 1) allows one request at a time, not {spec.concurrency}",
                'set `concurrency: 1` (or leave it out), or set `cpu: "1"` or more',
            )
        )
    return problems
