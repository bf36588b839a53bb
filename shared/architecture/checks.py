"""The checks beyond types, and the problem collector they report to.

`Report` gathers errors and warnings located in the file; `check_architecture` adds
everything the model's types cannot say about a validated `Architecture`: names,
references between services, dependency cycles, formats (project id, region, cpu,
memory, environment variables, secret references) and source paths. Used by
`shared.architecture.loading`, which parses the file and reports type errors first.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.architecture.cloud_run_limits import (
    MAX_RELEASED_NAME,
    limit_problems,
    release_name_problem,
)
from shared.architecture.model import INJECTED_ENV, Architecture, DeploymentSpec, ServiceSpec
from shared.architecture.path_checks import check_paths, shown
from shared.architecture.yaml_source import FieldPath, line_of, render_path
from shared.errors import Problem

PROJECT_ID_FIX = "add `project_id: my-gcp-project` (your Google Cloud project id) at the top"


@dataclass
class Report:
    """Problems found so far, located in the file."""

    file: str
    lines: Mapping[FieldPath, int]
    base_dir: Path | None
    check_paths_exist: bool
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    settled: set[FieldPath] = field(default_factory=set)  # has an error; check no further
    resolved_dirs: dict[str, str] = field(default_factory=dict)  # path_checks' directories

    @functools.cached_property
    def resolved_base(self) -> Path | None:
        """`base_dir` with its links resolved, once per check rather than once per path
        (0.05 s for 1,000 services). Raises OSError or RuntimeError (a link loop)."""
        return None if self.base_dir is None else self.base_dir.resolve()

    def problem(self, path: FieldPath, message: str, fix: str) -> Problem:
        return Problem(render_path(path), message, line_of(self.lines, path), fix, self.file)

    def error(self, path: FieldPath, message: str, fix: str = "") -> None:
        if path not in self.settled:
            self.errors.append(self.problem(path, message, fix))

    def warn(self, path: FieldPath, message: str, fix: str = "") -> None:
        self.warnings.append(self.problem(path, message, fix))

    def where(self, path: FieldPath) -> str:
        return f"`{render_path(path)}` (line {line_of(self.lines, path)})"


_PROJECT_ID = re.compile(r"(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]")
_SERVICE_NAME = re.compile(r"[a-z](?:[a-z0-9-]{0,47}[a-z0-9])?")
_REGION = re.compile(r"[a-z]+(?:-[a-z]+)+[0-9]+")
_CPU = re.compile(r"[0-9]*\.?[0-9]+m?")
_MEMORY = re.compile(r"[0-9]*\.?[0-9]+(?:[KMGT]i|[kMGT])")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_ID = r"[A-Za-z0-9_-]{1,255}"
_SECRET_REF = re.compile(
    rf"{_SECRET_ID}|projects/[^/\s]+/secrets/{_SECRET_ID}(?:/versions/(?:latest|[1-9][0-9]*))?"
)
# A name is secret-looking when a part of it is one of _SECRET_WORDS, or it ends in KEY
# (STRIPE_KEY), unless it names where a secret lives or describes one (PRIVATE_KEY_PATH,
# TOKEN_URL, SECRET_NAME) or is public (PUBLIC_KEY): those are refused by no one.
_SECRET_WORDS = frozenset(
    {"PASSWORD", "PASSWD", "PWD", "PASSPHRASE", "SECRET", "SECRETS", "TOKEN"}
    | {"APIKEY", "CREDENTIALS", "CREDS"}
)
_KEY_WORDS = frozenset({"KEY", "KEYS"})
_NOT_THE_SECRET = frozenset(
    {"PATH", "FILE", "DIR", "NAME", "ID", "URL", "URI", "ENDPOINT", "HEADER", "TTL"}
    | {"EXPIRY", "TIMEOUT", "LENGTH", "SIZE", "TYPE", "ALGORITHM", "VERSION", "ENABLED"}
)
# scheme://user:password@host: a password in a URL (postgres://, redis://, https://).
_URL_CREDENTIALS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@")
# An HTTP Authorization value: `Bearer <token>` or `Basic <base64>`.
_AUTH_VALUE = re.compile(r"\s*(?:Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}\s*", re.I)
_RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"})
_INJECTED_ENV = frozenset(INJECTED_ENV)
_DIRECTOR: FieldPath = ("service_manager_spec",)


def close_matches(word: str, possibilities: list[str]) -> list[str]:
    """The closest of `possibilities` to `word` (at most one), for a "did you mean".
    difflib is imported here, on the error path only: a file that validates never pays
    its ~1 ms import (docs/performance.md, "Issue 19: validate, the last milliseconds")."""
    import difflib

    return difflib.get_close_matches(word, possibilities, n=1)


def check_architecture(architecture: Architecture, report: Report, environment: str | None) -> None:
    """Everything the model's types cannot say: names, references, formats, paths."""
    _check_environment(architecture, report, environment)
    _check_root(architecture, report, environment)
    services = _services(architecture)
    _check_names(services, report)
    if architecture.release is not None:
        _check_released_names(services, report)
    _check_dependencies(services, report)
    for path, spec in services:
        if spec.deployment is not None:
            _check_deployment(spec.deployment, (*path, "deployment"), report)


def _services(architecture: Architecture) -> list[tuple[FieldPath, ServiceSpec]]:
    found: list[tuple[FieldPath, ServiceSpec]] = []
    if architecture.service_manager_spec is not None:
        found.append((_DIRECTOR, architecture.service_manager_spec))
    for flow_key, flow in architecture.dataflows.items():
        for key, spec in flow.services.items():
            found.append((("dataflows", flow_key, "services", key), spec))
    return found


def _check_environment(architecture: Architecture, report: Report, environment: str | None) -> None:
    known = sorted(architecture.deployment_environments)
    if not environment or environment in known:
        return
    close = close_matches(environment, known)
    hint = f"did you mean `{close[0]}`? " if close else ""
    fix = hint + (
        f"known environments: {', '.join(known)}"
        if known
        else "this file defines no `deployment_environments`"
    )
    report.error(("deployment_environments",), f"unknown environment `{shown(environment)}`", fix)


def _check_root(architecture: Architecture, report: Report, environment: str | None) -> None:
    environments = architecture.deployment_environments
    selected = environments.get(environment or "")
    if selected is None or selected.project_id is None:
        _check_project_id(architecture.project_id, ("project_id",), report)
    _check_region(architecture.region, ("region",), report)
    for name, override in environments.items():
        path: FieldPath = ("deployment_environments", name)
        if override.project_id is not None:
            _check_project_id(override.project_id, (*path, "project_id"), report)
        _check_region(override.region or "", (*path, "region"), report)


def _check_project_id(project_id: str, path: FieldPath, report: Report) -> None:
    if not project_id.strip():
        report.error(path, "`project_id` is empty", PROJECT_ID_FIX)
    elif not _PROJECT_ID.fullmatch(project_id):
        report.error(
            path,
            f"`{shown(project_id)}` is not a valid Google Cloud project id",
            "a project id is 6 to 30 lowercase letters, digits and hyphens, starts with a"
            " letter and does not end with a hyphen, e.g. `acme-dev`",
        )


def _check_region(region: str, path: FieldPath, report: Report) -> None:
    if region and not _REGION.fullmatch(region):
        message = f"region `{shown(region)}` does not look like a Google Cloud region"
        report.error(path, message, "e.g. `europe-west1` or `us-central1`")


def _check_names(services: list[tuple[FieldPath, ServiceSpec]], report: Report) -> None:
    first: dict[str, FieldPath] = {}
    for path, spec in services:
        written = (*path, "name") in report.lines or path == _DIRECTOR
        at = (*path, "name") if written else path
        if path != _DIRECTOR and spec.name != path[-1]:
            message = (
                f"service `{path[-1]}` is named `{shown(spec.name)}`, which is what gets deployed"
            )
            report.warn(at, message, f"use the same name for the key and `name`: `{spec.name}`")
        if not spec.name:
            report.error(at, "the service director has no `name`", "add `name: director`")
        elif not _SERVICE_NAME.fullmatch(spec.name):
            report.error(
                at,
                f"`{shown(spec.name)}` is not a valid Cloud Run service name",
                "use lowercase letters, digits and hyphens, start with a letter, do not end"
                f" with a hyphen, at most 49 characters: e.g. `{_suggest_name(spec.name)}`",
            )
        if spec.name in first:
            report.error(
                at,
                f"service name `{shown(spec.name)}` is used twice:"
                f" at {report.where(first[spec.name])} and at {report.where(at)}",
                "give each service its own name, unique across all dataflows and the director",
            )
        first.setdefault(spec.name, at)


def _check_released_names(services: list[tuple[FieldPath, ServiceSpec]], report: Report) -> None:
    for path, spec in services:
        problem = release_name_problem(spec.name) if path != _DIRECTOR else None
        if problem and spec.deployment is not None:
            written = (*path, "name") in report.lines
            fix = f"shorten the name to at most {MAX_RELEASED_NAME} characters, or drop `release:`"
            report.error((*path, "name") if written else path, problem, fix)


def _suggest_name(name: str) -> str:
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    cleaned = cleaned if cleaned[:1].isalpha() else f"svc-{cleaned}"
    return cleaned[:49].rstrip("-")


def _check_dependencies(services: list[tuple[FieldPath, ServiceSpec]], report: Report) -> None:
    where: dict[str, FieldPath] = {}
    for path, spec in services:
        where.setdefault(spec.name, path)
    graph: dict[str, list[str]] = {}
    for path, spec in services:
        for index, dependency in enumerate(spec.dependencies):
            if dependency in where:
                graph.setdefault(spec.name, []).append(dependency)
                continue
            close = close_matches(dependency, list(where))
            fix = f"did you mean `{close[0]}`?" if close else f"known services: {', '.join(where)}"
            message = f"`{shown(dependency)}` is not a service of this architecture"
            report.error((*path, "dependencies", index), message, fix)
    for cycle in _cycles(graph):
        report.error(
            (*where[cycle[0]], "dependencies"),
            f"dependency cycle: {' -> '.join([*cycle, cycle[0]])}",
            "remove one of these dependencies: no service in a cycle can start first",
        )


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """At least one cycle through every strongly connected group (iterative DFS)."""
    state: dict[str, bool] = {}  # False while on the current path, True when done
    found: dict[tuple[str, ...], list[str]] = {}
    for start in graph:
        if start in state:
            continue
        state[start], trail = False, [start]
        stack = [iter(graph[start])]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[trail.pop()] = True
                stack.pop()
            elif child not in state:
                state[child] = False
                trail.append(child)
                stack.append(iter(graph.get(child, [])))
            elif state[child] is False:
                cycle = trail[trail.index(child) :]
                found.setdefault(tuple(sorted(cycle)), cycle)
    return list(found.values())


def _check_deployment(deployment: DeploymentSpec, path: FieldPath, report: Report) -> None:
    cpu, memory = deployment.cpu, deployment.memory
    if cpu and (not _CPU.fullmatch(cpu) or not re.search(r"[1-9]", cpu)):
        fix = (
            'write a number of CPUs as text, e.g. `cpu: "1"`, `"2"` or `"1000m"`; a fraction'
            ' below 1 (e.g. `"0.5"`) also means concurrency 1 and CPU only during requests'
        )
        report.error((*path, "cpu"), f"cpu `{shown(cpu)}` is not an amount of CPU", fix)
    if memory and (not _MEMORY.fullmatch(memory) or not re.search(r"[1-9]", memory)):
        fix = "e.g. `memory: 512Mi` or `memory: 1Gi`"
        report.error((*path, "memory"), f"memory `{shown(memory)}` is not an amount of memory", fix)
    cpu_ok = not cpu or (_CPU.fullmatch(cpu) and re.search(r"[1-9]", cpu))
    memory_ok = not memory or (_MEMORY.fullmatch(memory) and re.search(r"[1-9]", memory))
    if cpu_ok and memory_ok:  # Cloud Run's combinations of well-formed values
        for limit in limit_problems(deployment):
            report.error((*path, limit.field), limit.message, limit.fix)
    _check_region(deployment.region, (*path, "region"), report)
    _check_environment_vars(deployment, path, report)
    _check_secrets(deployment, path, report)
    check_paths(deployment, path, report)


def _check_env_name(name: str, path: FieldPath, report: Report) -> bool:
    if not _ENV_NAME.fullmatch(name):
        fix = "use letters, digits and underscores, not starting with a digit: e.g. `LOG_LEVEL`"
        report.error(path, f"`{shown(name)}` is not a valid environment variable name", fix)
    elif name in _RESERVED_ENV:
        fix = "remove it: Cloud Run sets it for every container"
        report.error(path, f"`{name}` is reserved by Cloud Run", fix)
    elif name in _INJECTED_ENV:
        message = f"archdeploy sets `{name}` itself at deploy time, replacing this value"
        report.warn(path, message, "remove it, or use another name for a different value")
        return True
    else:
        return True
    return False


def _check_environment_vars(deployment: DeploymentSpec, path: FieldPath, report: Report) -> None:
    for name, value in deployment.environment_vars.items():
        at = (*path, "environment_vars", name)
        if not _check_env_name(name, at, report):
            continue
        if "\0" in value:
            fix = "remove the NUL character (\\0 or \\x00): no environment value can hold one"
            report.error(at, f"the value of `{name}` contains a NUL character", fix)
        elif reason := _secret_reason(name, value):
            report.error(
                at,
                f"`{name}` {reason}, written in plain text here",
                "store the value in Secret Manager and reference it instead:"
                f" `secret_environment_vars: [{{name: {name}, value_from: <secret-id>}}]`",
            )


def secret_looking_name(name: str) -> bool:
    """STRIPE_KEY, DB_PASSWORD, GITHUB_TOKEN: yes; PUBLIC_KEY, PRIVATE_KEY_PATH, TOKEN_URL: no."""
    parts = [part for part in name.upper().split("_") if part]
    if not parts or parts[-1] in _NOT_THE_SECRET or "PUBLIC" in parts:
        return False
    return parts[-1] in _KEY_WORDS or any(part in _SECRET_WORDS for part in parts)


def _secret_reason(name: str, value: str) -> str | None:
    if not value:
        return None
    if secret_looking_name(name):
        return "looks like a secret, and its value is"
    if _URL_CREDENTIALS.search(value):
        return "holds a URL with a user and password (user:password@), which is"
    if _AUTH_VALUE.fullmatch(value):
        return "holds an Authorization credential (Bearer/Basic ...), which is"
    return None


def _check_secrets(deployment: DeploymentSpec, path: FieldPath, report: Report) -> None:
    seen: set[str] = set()
    for index, secret in enumerate(deployment.secret_environment_vars):
        at = (*path, "secret_environment_vars", index)
        _check_env_name(secret.name, (*at, "name"), report)
        if secret.name in deployment.environment_vars:
            message = f"`{secret.name}` is set both in `environment_vars` and here"
            report.error((*at, "name"), message, "keep only one: remove it from `environment_vars`")
        elif secret.name in seen:
            message = f"`{secret.name}` is listed twice in `secret_environment_vars`"
            report.error((*at, "name"), message, "keep one of them")
        seen.add(secret.name)
        if not _SECRET_REF.fullmatch(secret.value_from):
            report.error(
                (*at, "value_from"),
                f"`value_from` of `{secret.name}` is not a Secret Manager secret id",
                "use the secret's id, e.g. `db-password`, or its resource name"
                " `projects/PROJECT/secrets/SECRET[/versions/VERSION]`",
            )
