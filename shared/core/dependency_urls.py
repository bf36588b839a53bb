"""Services find their dependencies: each gets the stable URL of every service it lists in
`dependencies`, as `<NAME>_URL` (`ingest` → `INGEST_URL`, `fraud-check` → `FRAUD_CHECK_URL`).

Planned in two steps, like `SERVICE_DIRECTOR_URL`:

- `plan_dependency_env` (at planning, pure): a dependency deployed in this run gets an
  empty placeholder, filled in when the dependent's deploy task is released (the run engine
  releases it only after its dependencies deployed, so their URLs are known then); a
  dependency outside the run (another dataflow not selected) gets its URL if one is known
  (its `deployment.service_url`, or an earlier run's result), and is otherwise left out,
  with a note saying why.
- `fill_dependency_urls` (at release): the placeholders get the URLs the dependencies'
  deploy tasks reported (a fresh deploy's, or an unchanged service's current URL).

A key the user set to a non-empty value wins (an empty one counts as unset). A dependency
on the director gives `SERVICE_DIRECTOR_URL` only (no `DIRECTOR_URL` duplicate), and so
does any dependency whose key is one archdeploy injects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from shared.architecture.model import INJECTED_ENV, Architecture


def url_key(service: str) -> str:
    """The environment key that carries `service`'s URL: upper-cased, `-` and `.` as `_`."""
    return service.upper().replace("-", "_").replace(".", "_") + "_URL"


def plan_dependency_env(
    arch: Architecture,
    *,
    dependencies: Sequence[str],
    user_env: Mapping[str, str],
    in_run: set[str],
    known_urls: Mapping[str, str],
) -> tuple[dict[str, str], list[str]]:
    """The dependency keys to add to a deploy's environment, and notes on those left out.

    `in_run`: the services deployed in this run (placeholders, filled at release);
    `known_urls`: URLs of services from earlier runs."""
    director = arch.service_manager_spec.name if arch.service_manager_spec else None
    env: dict[str, str] = {}
    notes: list[str] = []
    for dep in dependencies:
        key = url_key(dep)
        if dep == director or key in INJECTED_ENV or user_env.get(key):
            continue
        if dep in in_run:
            env[key] = ""
        elif url := _declared_url(arch, dep) or known_urls.get(dep, ""):
            env[key] = url
        else:
            notes.append(
                f"{key} left out: {dep} is not deployed in this run and no earlier run "
                "recorded its URL (deploy its dataflow, or set deployment.service_url)"
            )
    return env, notes


def _declared_url(arch: Architecture, name: str) -> str:
    for flow in arch.dataflows.values():
        spec = flow.services.get(name)
        if spec is not None and spec.deployment is not None and spec.deployment.service_url:
            return spec.deployment.service_url
    return ""


def fill_dependency_urls(
    env: dict[str, str], depends_on: Sequence[str], urls: Mapping[str, str]
) -> dict[str, str]:
    """`env` with each empty dependency placeholder set to the dependency's reported URL."""
    filled = dict(env)
    for dep in depends_on:
        key = url_key(dep)
        if key in filled and not filled[key] and urls.get(dep):
            filled[key] = urls[dep]
    return filled


def placeholder_owners(depends_on: Sequence[str]) -> dict[str, str]:
    """Key → dependency, for showing a placeholder as "(<dep>'s URL, once deployed)"."""
    return {url_key(dep): dep for dep in depends_on}


def outside_dependencies(arch: Architecture, dataflows: Sequence[str]) -> set[str]:
    """Dependencies of the selected dataflows' services that this run does not deploy and
    whose URL the file does not declare: those an earlier run's URL may stand for."""
    members = [
        spec
        for flow in dataflows
        for spec in arch.dataflows[flow].services.values()
        if spec.deployment is not None
    ]
    in_run = {spec.name for spec in members}
    director = arch.service_manager_spec.name if arch.service_manager_spec else None
    return {
        dep
        for spec in members
        for dep in spec.dependencies
        if dep not in in_run and dep != director and not _declared_url(arch, dep)
    }


def earlier_urls(wanted: set[str], results: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """The latest URL of each wanted service among earlier runs' URLs, newest run first."""
    found: dict[str, str] = {}
    for urls in results:
        for name in wanted - found.keys():
            if urls.get(name):
                found[name] = urls[name]
        if found.keys() >= wanted:
            break
    return found
