"""Every message and record that crosses the bus or lands in the store.

Each model has a `version`, so a function can refuse (and record) a message written by
a newer archdeploy instead of misreading it. Task messages carry one service's spec and
ids, never the whole architecture: Eventarc hands a function at most 512 KB per event,
and the run keeps the architecture in the store.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.architecture.model import DeploymentSpec, HealthCheck, ReleaseSpec
from shared.field_defaults import empty_list

MESSAGE_VERSION = 1

# Logical topic names; the Pub/Sub bus maps them to the project's real topics.
TOPIC_REQUESTS = "requests"
TOPIC_TASKS = "tasks"
TOPIC_COMPLETIONS = "completions"
TOPIC_RESULTS = "results"


def utcnow() -> datetime:
    return datetime.now(UTC)


def task_id_for(run_id: str, phase: Phase | str, service: str) -> str:
    return f"{run_id}:{Phase(phase).value}:{service}"


class Phase(StrEnum):
    BUILD = "build"
    DIRECTOR = "director"
    DEPLOY = "deploy"
    ROLLBACK = "rollback"  # only when the deploy phase failed and the run asked for it
    # Releases (`shared.core.release`): in place of deploy, when the run asked for one.
    STAGE = "stage"  # a changed service's new revision, tagged, taking no traffic
    VERIFY = "verify"  # its checks, against the tag's URL
    PROMOTE = "promote"  # traffic to it, dependencies first
    REVERT = "revert"  # traffic back to what served before, dependents first


RELEASE_PHASES = (Phase.STAGE, Phase.VERIFY, Phase.PROMOTE, Phase.REVERT)


class TaskStatus(StrEnum):
    WAITING = "waiting"  # planned; released when its phase opens and its dependencies are up
    PENDING = "pending"  # released: a task message was (or is being) published
    RUNNING = "running"  # claimed by a worker, under a lease
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # not started because something it needed failed
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL_TASK


_TERMINAL_TASK = frozenset(
    {
        TaskStatus.SUCCEEDED,
        TaskStatus.FAILED,
        TaskStatus.SKIPPED,
        TaskStatus.TIMED_OUT,
        TaskStatus.CANCELLED,
    }
)


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self is not RunStatus.RUNNING


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    version: int = MESSAGE_VERSION

    @model_validator(mode="after")
    def _known_version(self) -> _Message:
        if self.version > MESSAGE_VERSION:
            raise ValueError(
                f"message version {self.version} is newer than this archdeploy understands "
                f"({MESSAGE_VERSION}): upgrade the functions"
            )
        return self


class CheckOutcome(BaseModel):
    """One release check's outcome: what ran, and what it answered."""

    model_config = ConfigDict(frozen=True)
    name: str
    passed: bool
    detail: str = ""  # the response or output (trimmed), or why it failed
    # Failed because it was interrupted (Ctrl-C reached its command), not on its merits.
    interrupted: bool = False


class ReleaseDetail(BaseModel):
    """What a release task found and did for one service."""

    model_config = ConfigDict(frozen=True)
    revision: str = ""  # the staged revision
    tag: str = ""
    tag_url: str = ""
    created: bool = False  # the service did not exist: undoing the stage is a teardown
    previous: dict[str, int] | None = None  # revision -> percent that served before
    checks: list[CheckOutcome] = Field(default_factory=empty_list)
    percent: int | None = None  # the staged revision's share of traffic after promote


class DeployRequest(_Message):
    """Ask for one run: an architecture (inline or by location) and what to deploy of it."""

    architecture: str | None = Field(default=None, description="the file's text, YAML or JSON")
    architecture_uri: str | None = Field(
        default=None,
        description="a local path, gs://bucket/object, or github://owner/repo/path@ref",
    )
    source_root: str | None = Field(
        default=None, description="where relative source paths resolve; default: the file's dir"
    )
    dataflows: list[str] = Field(default_factory=empty_list, description="empty: all dataflows")
    director_url: str | None = None
    environment: str | None = Field(default=None, description="a deployment_environments key")
    idempotency_key: str | None = None
    requested_by: str = ""
    supersede_key: str | None = Field(
        default=None, description="runs with the same key replace each other (repo + branch)"
    )
    supersede_order: float | None = Field(
        default=None, description="when it was pushed: a run never supersedes a later one"
    )
    build_only: bool = Field(default=False, description="build images; deploy nothing")
    no_cache: bool = Field(
        default=False, description="build and deploy everything, even what is unchanged"
    )
    rollback_on_failure: bool = Field(
        default=False, description="if deploys fail, put every service back where it was"
    )
    images: dict[str, str] = Field(
        default_factory=dict, description="service -> image already built: not built again"
    )
    service_accounts: dict[str, str] = Field(
        default_factory=dict, description="service -> account email, overriding the file"
    )
    release: bool = Field(
        default=False,
        description="stage, verify, then promote (the file's `release:` or all at once)",
    )
    rollback_of: str | None = Field(
        default=None, description="a released run: put what it promoted back on what served before"
    )

    @model_validator(mode="after")
    def _one_architecture(self) -> DeployRequest:
        if self.rollback_of is not None and self.architecture is None is self.architecture_uri:
            return self  # a rollback's architecture is its released run's
        if (self.architecture is None) == (self.architecture_uri is None):
            raise ValueError("give exactly one of `architecture` (text) or `architecture_uri`")
        return self


class TaskMessage(_Message):
    run_id: str
    task_id: str
    phase: Phase
    service: str
    dataflow: str | None = None
    service_account: str = ""
    spec: DeploymentSpec
    project_id: str
    region: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    health_check: HealthCheck | None = None
    no_cache: bool = False


class TaskCompletion(_Message):
    run_id: str
    task_id: str
    phase: Phase
    service: str
    attempt: int = 1
    status: TaskStatus
    image: str | None = None
    url: str | None = None
    error: str | None = None
    build_id: str | None = None
    reused: bool = False  # a cached image, or a deploy skipped because nothing changed
    previous: str | None = None  # deploys: what served before (for a rollback)
    release: ReleaseDetail | None = None  # release phases: revision, tag, checks, traffic
    started_at: datetime | None = None
    finished_at: datetime = Field(default_factory=utcnow)
    worker: str = ""

    @model_validator(mode="after")
    def _terminal(self) -> TaskCompletion:
        if not self.status.terminal:
            raise ValueError(f"a completion must carry a terminal status, not {self.status}")
        return self


class TaskRecord(BaseModel):
    """One task's stored state; the store moves it only by compare-and-set."""

    model_config = ConfigDict(extra="ignore")
    version: int = MESSAGE_VERSION
    task_id: str
    run_id: str
    phase: Phase
    service: str
    dataflow: str | None = None
    status: TaskStatus = TaskStatus.WAITING
    attempt: int = 0
    depends_on: list[str] = Field(default_factory=empty_list)
    # Admission order when a cap holds tasks back (`shared.core.priority`): `priority` is
    # the estimated seconds of the longest path from this task's start to the run's end;
    # `rank` its place in that order, ties in file order. Set once, at planning.
    priority: float = 0.0
    rank: int = 0
    service_account: str = ""
    spec: DeploymentSpec | None = None
    health_check: HealthCheck | None = None
    image: str | None = None
    url: str | None = None
    error: str | None = None
    build_id: str | None = None
    reused: bool = False
    previous: str | None = None
    release: ReleaseDetail | None = None
    claimed_by: str = ""
    lease_expires_at: datetime | None = None
    released_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return round((self.finished_at - self.started_at).total_seconds(), 3)


class RunRecord(BaseModel):
    """A run's own document. Written at creation, at each phase change and at the end only."""

    model_config = ConfigDict(extra="ignore")
    version: int = MESSAGE_VERSION
    run_id: str
    idempotency_key: str
    status: RunStatus = RunStatus.RUNNING
    phase: Phase = Phase.BUILD
    project_id: str = ""
    region: str = ""
    environment: str = ""
    architecture_file: str = ""
    source_root: str = ""
    dataflows: list[str] = Field(default_factory=empty_list)
    director_url: str | None = None
    requested_by: str = ""
    supersede_key: str | None = None
    supersede_order: float | None = None  # the push's time: older pushes never supersede
    no_cache: bool = False
    rollback_on_failure: bool = False
    release: ReleaseSpec | None = None  # a release run: how traffic moves
    rollback_of: str | None = None  # a rollback run: the released run it undoes
    halted: str | None = None  # why no new task may start (a build failed, cancelled)
    cancelled_by: str | None = None  # who cancelled (a person, or the run that superseded it)
    error: str | None = None  # a run-level error: the request itself was invalid
    # Embedded runs only: the archdeploy process that drives the run (its tasks run in it
    # alone), by pid, start time (against pid reuse) and host. None on Google Cloud.
    driver_pid: int | None = None
    driver_started: float | None = None
    driver_host: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class ServiceError(BaseModel):
    model_config = ConfigDict(frozen=True)
    service: str
    phase: Phase
    error: str


class ServiceResult(BaseModel):
    service: str
    dataflow: str | None = None
    status: str
    image: str | None = None
    url: str | None = None
    error: str | None = None
    build_status: TaskStatus | None = None
    deploy_status: TaskStatus | None = None
    build_seconds: float | None = None
    deploy_seconds: float | None = None
    image_reused: bool = False
    unchanged: bool = False
    rolled_back: bool = False
    # Releases
    staged_revision: str | None = None
    tag_url: str | None = None
    checks: list[CheckOutcome] = Field(default_factory=empty_list)
    promoted_percent: int | None = None
    release_step: str | None = None  # what a release is doing to it now (e.g. verifying)


class RunResult(BaseModel):
    """What a run produced: every image, every URL, every error."""

    version: int = MESSAGE_VERSION
    run_id: str
    status: RunStatus
    phase: Phase
    project_id: str = ""
    director_url: str | None = None
    dataflows: list[str] = Field(default_factory=empty_list)
    error: str | None = None
    created_at: datetime
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    services: dict[str, ServiceResult] = Field(default_factory=dict)
    images: dict[str, str] = Field(default_factory=dict)
    urls: dict[str, str] = Field(default_factory=dict)
    errors: list[ServiceError] = Field(default_factory=empty_list)
    rolled_back: list[str] = Field(default_factory=empty_list)


class RunFinished(_Message):
    """Published once per run on the results topic."""

    run_id: str
    status: RunStatus
    result: RunResult
