"""The exceptions archdeploy raises.

    ArchdeployError
    ├── UsageError              a command line or setting that cannot work (exit code 2)
    ├── ArchitectureError       an architecture file that does not validate (exit code 2);
    │                           carries every Problem: file, field path, line, fix
    ├── DeploymentError         some services failed to build or deploy (exit code 1);
    │                           carries every failure and everything that succeeded
    ├── BackendError            a store, bus or cloud API call failed; `retryable` says
    │                           whether trying again later can help
    └── RunNotFound             a run id that the store does not know

Build and deploy failures of single services are not raised across the bus: they
travel inside a failed `TaskCompletion`. `DeploymentError` is raised only at the
edges (the `DeploymentManager` facade) once a whole run has ended.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2


class ArchdeployError(Exception):
    """Root of every error archdeploy raises on purpose."""

    exit_code = EXIT_RUN_FAILED


class UsageError(ArchdeployError):
    exit_code = EXIT_USAGE


class RunNotFound(ArchdeployError):
    exit_code = EXIT_USAGE

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run with id {run_id!r}: `archdeploy runs` lists the known runs")
        self.run_id = run_id


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an architecture file, located as precisely as the input allows."""

    path: str
    message: str
    line: int | None = None
    fix: str = ""
    file: str = ""

    def __str__(self) -> str:
        where = self.file or "<architecture>"
        if self.line is not None:
            where += f":{self.line}"
        text = f"{where}: {self.path or '(root)'}: {self.message}"
        if self.fix:
            text += f" ({self.fix})"
        return text


class ArchitectureError(ArchdeployError):
    exit_code = EXIT_USAGE

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        count = len(self.problems)
        head = "1 problem" if count == 1 else f"{count} problems"
        lines = [f"invalid architecture ({head}):"] + [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ServiceFailure:
    service: str
    phase: str
    error: str

    def __str__(self) -> str:
        return f"{self.service} ({self.phase}): {self.error}"


@dataclass
class DeploymentError(ArchdeployError):
    """Some services failed. Lists every failure and keeps what did succeed."""

    failures: list[ServiceFailure]
    images: Mapping[str, str] = field(default_factory=dict)
    urls: Mapping[str, str] = field(default_factory=dict)
    result: object | None = None  # the run's RunResult, when one was produced

    def __post_init__(self) -> None:
        count = len(self.failures)
        head = "1 service failed" if count == 1 else f"{count} services failed"
        lines = [f"{head}:"] + [f"  {f}" for f in self.failures]
        Exception.__init__(self, "\n".join(lines))

    def __str__(self) -> str:
        return str(self.args[0])


class BackendError(ArchdeployError):
    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
