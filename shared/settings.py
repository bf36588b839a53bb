"""One settings model, read from `ARCHDEPLOY_*` environment variables.

The README's configuration table lists every variable; a missing or contradictory
setting fails at start with a message naming the variable.

`Settings(**values)` reads the environment as pydantic-settings did (this module replaced
it: importing it cost every command ~40 ms, half of it `asyncio`): a field's value is the
keyword argument if given, else `ARCHDEPLOY_<FIELD>` (any case), else its default. A list
field's variable holds JSON (`["main", "release/*"]`); the others hold the text pydantic
validates. Values from the environment count as set (`model_fields_set`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from shared.errors import UsageError
from shared.field_defaults import empty_list

ENV_PREFIX = "ARCHDEPLOY_"


def _main_branch() -> list[str]:
    return ["main"]


class Settings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, validate_default=True)

    def __init__(self, **values: Any) -> None:
        super().__init__(**{**from_environment(), **values})

    backend: Literal["local", "gcp"] = Field(
        default="local", description="default backend of every port"
    )
    bus: Literal["inprocess", "pubsub"] | None = Field(default=None, description="message bus")
    store: Literal["sqlite", "firestore"] | None = Field(default=None, description="run store")
    deployer: Literal["local", "gcp"] | None = Field(default=None, description="container deployer")
    state_dir: Path = Field(default=Path(".archdeploy"), description="embedded state directory")
    parallelism: int = Field(default=32, ge=1, le=4096, description="in-process worker threads")
    project: str = Field(default="", description="Google Cloud project of archdeploy itself")
    region: str = Field(default="europe-west1", description="region for builds and services")
    topic_requests: str = "archdeploy-requests"
    topic_tasks: str = "archdeploy-tasks"
    topic_completions: str = "archdeploy-completions"
    topic_results: str = "archdeploy-results"
    firestore_database: str = "(default)"
    firestore_collection: str = "archdeploy_runs"
    source_bucket: str = Field(default="", description="bucket for uploaded build sources")
    image_repo: str = Field(default="archdeploy", description="default Artifact Registry repo")
    build_service_account: str = Field(
        default="",
        description="gcp: account Cloud Build runs image builds as (then logging goes to Cloud"
        " Logging only); empty: the project's default Cloud Build account",
    )
    default_service_account: str = Field(
        default="",
        description="gcp: account a service without `service_account` runs as (terraform's"
        " archdeploy-runtime); empty: Cloud Run's default, the Compute Engine account",
    )
    build_deadline_seconds: float = Field(default=3600, gt=0, description="a build task's")
    deploy_deadline_seconds: float = Field(default=1200, gt=0, description="a deploy task's")
    run_deadline_seconds: float = Field(default=7200, gt=0, description="a whole run's")
    republish_after_seconds: float = Field(
        default=120, gt=0, description="re-send a task message nobody picked up after this"
    )
    cancel_builds_on_failure: bool = Field(
        default=False, description="cancel builds in flight when one fails (else they finish)"
    )
    build_timeout_seconds: float = Field(default=1200, gt=0)
    deploy_timeout_seconds: float = Field(default=600, gt=0)
    health_timeout_seconds: float = Field(default=60, gt=0)
    build_concurrency: int = Field(default=10, ge=1, description="builds at once in one run")
    deploy_concurrency: int = Field(default=20, ge=1, description="deploys at once in one run")
    project_build_cap: int = Field(
        default=0, ge=0, description="builds at once in the project, all runs together; 0: off"
    )
    build_slots_file: Path | None = Field(
        default=None,
        description="embedded: the cap's slots, shared by every state folder "
        "(default: $XDG_STATE_HOME/archdeploy/build-slots.db)",
    )
    async_builds: bool = Field(
        default=True, description="gcp: submit builds and take their result from build events"
    )
    http_token: SecretStr | None = Field(default=None, description="bearer token for HTTP calls")
    http_source_root: Path | None = Field(
        default=None, description="HTTP door: local source_root must be inside (default: cwd)"
    )
    http_allowed_origins: list[str] = Field(
        default_factory=empty_list,
        description="HTTP door: browser origins accepted beside its own",
    )
    webhook_secret: SecretStr | None = Field(default=None, description="GitHub webhook secret")
    github_token: SecretStr | None = Field(default=None, description="reads pushed commits")
    webhook_branches: list[str] = Field(default_factory=_main_branch)
    webhook_architecture_path: str = "services.yaml"
    webhook_give_up_seconds: float = Field(
        default=120, ge=0, description="a push whose file cannot be read fails after this"
    )
    github_api_url: str = Field(
        default="https://api.github.com", description="GitHub REST API (Enterprise: .../api/v3)"
    )

    @property
    def bus_kind(self) -> str:
        return self.bus or ("pubsub" if self.backend == "gcp" else "inprocess")

    @property
    def store_kind(self) -> str:
        return self.store or ("firestore" if self.backend == "gcp" else "sqlite")

    @property
    def deployer_kind(self) -> str:
        return self.deployer or self.backend

    @property
    def topics(self) -> dict[str, str]:
        return {
            "requests": self.topic_requests,
            "tasks": self.topic_tasks,
            "completions": self.topic_completions,
            "results": self.topic_results,
        }

    @model_validator(mode="after")
    def _cloud_settings_present(self) -> Settings:
        uses_cloud = "pubsub" in (self.bus_kind,) or self.store_kind == "firestore"
        if (uses_cloud or self.deployer_kind == "gcp") and not self.project:
            raise ValueError(
                f"{ENV_PREFIX}PROJECT is required when a port uses Google Cloud "
                f"(bus={self.bus_kind}, store={self.store_kind}, deployer={self.deployer_kind})"
            )
        if self.deployer_kind == "gcp" and not self.source_bucket:
            raise ValueError(f"{ENV_PREFIX}SOURCE_BUCKET is required with the gcp deployer")
        return self


def from_environment(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The settings `ARCHDEPLOY_*` variables give, by field name: names match in any case
    (as pydantic-settings matched them); a list field's JSON is decoded, and text that is
    not JSON is left for validation to refuse, naming the variable."""
    found = {k.lower(): v for k, v in (os.environ if environ is None else environ).items()}
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        raw = found.get(f"{ENV_PREFIX}{name}".lower())
        if raw is None:
            continue
        if name in _JSON_FIELDS:
            try:
                values[name] = json.loads(raw)
                continue
            except ValueError:
                pass
        values[name] = raw
    return values


_JSON_FIELDS = frozenset(
    name for name, field in Settings.model_fields.items() if get_origin(field.annotation) is list
)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (and `overrides`); raises `UsageError` naming the variable."""
    if "project" not in overrides and not os.environ.get(f"{ENV_PREFIX}PROJECT"):
        google_project = os.environ.get("GOOGLE_CLOUD_PROJECT")
        if google_project:
            overrides["project"] = google_project
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            name = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
            fix = ' (a JSON list, e.g. ["value"])' if field in _JSON_FIELDS else ""
            problems.append(f"{name}: {err['msg']}{fix}")
        raise UsageError("invalid settings:\n  " + "\n  ".join(problems)) from None
