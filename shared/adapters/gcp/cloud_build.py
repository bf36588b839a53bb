"""Cloud Build requests and results: image names, build tags, `cloud-builds` notifications.

How a build names its task. Cloud Build tags must match `^[\\w][\\w.-]{0,127}$`, and a
task id `{run_id}:{phase}:{service}` holds `:`. So a build made by archdeploy carries:

    archdeploy            marks the build as ours (anything without it is ignored)
    ad-run-<run_id>       the task id's three parts, each escaped: every byte outside
    ad-phase-<phase>      [A-Za-z0-9_-] of its UTF-8 form is written `.xx` (lowercase hex),
    ad-svc-<service>      so `.` itself becomes `.2e` and decoding is exact

`task_id_from_build` decodes the three parts and joins them with `:`. The tags are also
what one filters on: `gcloud builds list --filter='tags=ad-run-<run_id>'`. Substitutions
are not used: Cloud Build rejects ones the steps do not reference (unless the build opts
into ALLOW_LOOSE), and a task id is data about the build, not input to it.

How a build names its input. A build of a local source also carries

    ad-src-<hex>          the first 32 hex digits of its input digest (see input_digest)

and its image is tagged `src-<first 12>`. Cloud Build keeps the history, so it is the
cache: a later run asks ListBuilds for `tags="ad-src-<hex>" AND status="SUCCESS"` and
reuses the newest such build's image, pinned by digest, instead of building again.
(Filter syntax: https://cloud.google.com/build/docs/view-build-results, "Filtering build
results using queries"; values are double-quoted.)

Nothing here imports a cloud SDK at module level; `parse_build_notification` needs none at
all, so the function that receives `cloud-builds` messages loads only `json`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

DOCKER_STEP = "gcr.io/cloud-builders/docker"
PACK_STEP = "gcr.io/k8s-skaffold/pack"
BUILDPACKS_BUILDER = "gcr.io/buildpacks/builder:google-22"
OUR_TAG = "archdeploy"
BUILD_PHASE = "build"
SUCCESS = "SUCCESS"
FAILED_STATUSES = frozenset({"FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"})
_STATUS_NUMBERS = {  # google.devtools.cloudbuild.v1.Build.Status, for integer-enum JSON
    0: "STATUS_UNKNOWN",
    10: "PENDING",
    1: "QUEUED",
    2: "WORKING",
    3: "SUCCESS",
    4: "FAILURE",
    5: "INTERNAL_ERROR",
    6: "TIMEOUT",
    7: "CANCELLED",
    9: "EXPIRED",
}
_TAG_PREFIXES = {"run": "ad-run-", "phase": "ad-phase-", "service": "ad-svc-"}
SOURCE_TAG_PREFIX = "ad-src-"
SOURCE_TAG_HEX = 32
_TAG_MAX = 128
_SAFE = re.compile(r"[A-Za-z0-9_-]")


@dataclass(frozen=True)
class BuildNotification:
    """A finished archdeploy build, as decoded from the `cloud-builds` topic."""

    task_id: str
    run_id: str
    service: str
    build_id: str
    status: Literal["succeeded", "failed"]
    image: str = ""  # pinned by digest when succeeded
    error: str = ""  # what failed, with the log URL, when failed


def encode_tag_part(text: str) -> str:
    return "".join(c if _SAFE.fullmatch(c) else _escape(c) for c in text)


def decode_tag_part(text: str) -> str:
    """Inverse of `encode_tag_part`. Raises ValueError on a malformed escape."""
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == ".":
            out.append(int(text[i + 1 : i + 3], 16))  # ValueError when malformed
            i += 3
        else:
            out += text[i].encode()
            i += 1
    return out.decode("utf-8")


def _escape(char: str) -> str:
    return "".join(f".{byte:02x}" for byte in char.encode("utf-8"))


def task_parts(task_id: str, *, run_id: str, service: str) -> tuple[str, str, str]:
    """(run_id, phase, service) of `task_id`, or of a build task when there is none."""
    if not task_id:
        return run_id, BUILD_PHASE, service
    parts = task_id.rsplit(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"task id {task_id!r} is not of the form RUN_ID:PHASE:SERVICE")
    return parts[0], parts[1], parts[2]


def build_tags(run_id: str, phase: str, service: str) -> list[str]:
    """The tags that mark a build as archdeploy's and name its task (see module doc).

    Raises:
        ValueError: a part is too long to fit in a 128-character tag.
    """
    values = {"run": run_id, "phase": phase, "service": service}
    tags = [OUR_TAG]
    for key, prefix in _TAG_PREFIXES.items():
        if not values[key]:
            continue
        tag = prefix + encode_tag_part(values[key])
        if len(tag) > _TAG_MAX:
            raise ValueError(f"{key} {values[key]!r} is too long for a Cloud Build tag")
        tags.append(tag)
    return tags


def task_parts_from_tags(tags: Iterable[str]) -> tuple[str, str, str] | None:
    """(run_id, phase, service) encoded in an archdeploy build's tags, else None."""
    tags = list(tags)
    if OUR_TAG not in tags:
        return None
    found: dict[str, str] = {}
    for tag in tags:
        for key, prefix in _TAG_PREFIXES.items():
            if tag.startswith(prefix):
                try:
                    found[key] = decode_tag_part(tag.removeprefix(prefix))
                except (ValueError, UnicodeDecodeError):
                    return None
    if len(found) != len(_TAG_PREFIXES):
        return None
    return found["run"], found["phase"], found["service"]


def task_id_from_build(build: Any) -> str | None:
    """The task id of a build made by archdeploy (a `Build` message or its REST dict)."""
    tags = build.get("tags", []) if isinstance(build, Mapping) else build.tags
    parts = task_parts_from_tags(tags)
    return ":".join(parts) if parts else None


def source_tag(input_digest: str) -> str:
    """The build tag naming an input digest: `ad-src-` and its first 32 hex digits."""
    if not re.fullmatch(r"[0-9a-f]{64}", input_digest):
        raise ValueError(f"input digest {input_digest!r} is not 64 lowercase hex digits")
    return SOURCE_TAG_PREFIX + input_digest[:SOURCE_TAG_HEX]


def cached_builds_filter(tag: str) -> str:
    """The ListBuilds filter for the successful builds carrying `tag`."""
    return f'tags="{tag}" AND status="SUCCESS"'


def newest_pinned_image(builds: Iterable[Any], repository: str) -> str | None:
    """The image pushed to `repository` (any tag) by the newest of `builds`, pinned."""
    found: list[tuple[float, str]] = []
    for build in builds:
        created = build.create_time.timestamp() if build.create_time else 0.0
        for image in build.results.images:
            if image.digest and image_repository(image.name) == image_repository(repository):
                found.append((created, pin_image(image.name, image.digest)))
    return max(found)[1] if found else None


def image_repository(image: str) -> str:
    """`image` without its tag or digest."""
    return pin_image(image, "").removesuffix("@")


def image_name(*, region: str, project: str, repo: str, service: str) -> str:
    """`REGION-docker.pkg.dev/PROJECT/REPO/SERVICE`; a `repo` holding `/` is taken as the
    whole repository path (another registry or project)."""
    base = repo.rstrip("/") if "/" in repo else f"{region}-docker.pkg.dev/{project}/{repo}"
    return f"{base}/{service.lower()}"


def image_uri(*, region: str, project: str, repo: str, service: str, tag: str) -> str:
    """`image_name(...)` tagged `tag`."""
    return f"{image_name(region=region, project=project, repo=repo, service=service)}:{tag}"


def pin_image(image: str, digest: str) -> str:
    """`image` with its tag (or old digest) replaced by `@digest`."""
    name = image.split("@", 1)[0]
    head, slash, last = name.rpartition("/")
    return f"{head}{slash}{last.split(':', 1)[0]}@{digest}"


def build_resource(
    *,
    image: str,
    bucket: str,
    object_name: str,
    dockerfile: bool,
    build_dir: str,
    tags: list[str],
    timeout: float,
    service_account: str = "",
) -> Any:
    """The `cloudbuild_v1.Build` to create: one docker or pack step, pushing `image`.

    With `service_account` (projects/P/serviceAccounts/EMAIL, `account_resource`) the
    build runs as that account, and then logs to
    Cloud Logging only: "if 'build.service_account' is specified, the build must either (a)
    specify 'build.logs_bucket', (b) use the REGIONAL_USER_OWNED_BUCKET ... or (c) use
    either CLOUD_LOGGING_ONLY / NONE logging options" (Cloud Build's answer otherwise;
    cloud.google.com/build/docs/securing-builds/configure-user-specified-service-accounts).
    """
    from google.cloud.devtools import cloudbuild_v1 as cb

    if dockerfile:
        args = ["build", "-t", image, "--network", "cloudbuild", "."]
        step = cb.BuildStep(name=DOCKER_STEP, args=args, dir_=build_dir)
    else:
        path = build_dir or "."
        args = ["build", image, "--builder", BUILDPACKS_BUILDER, "--path", path]
        step = cb.BuildStep(
            name=PACK_STEP, entrypoint="pack", args=[*args, "--network", "cloudbuild"]
        )
    build = cb.Build(
        source=cb.Source(storage_source=cb.StorageSource(bucket=bucket, object_=object_name)),
        steps=[step],
        images=[image],  # Cloud Build pushes these and reports their digests
        tags=tags,
        timeout=timedelta(seconds=timeout),
    )
    if service_account:
        build.service_account = service_account
        build.options = cb.BuildOptions(logging=cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY)
    return build


def build_name(build: str, project: str, region: str) -> str:
    """The full name projects/P/locations/L/builds/ID of `build` (a full name, or a bare
    id of a build in `project` and `region`). Only the full name routes to the build's
    region: "This method only cancels builds in the "global" region when using the legacy
    resource path projects/{projectId}/builds/{id}:cancel" (Cloud Build REST reference,
    projects.builds.cancel)."""
    if "/builds/" in build:
        return build
    return f"projects/{project}/locations/{region}/builds/{build}"


def account_resource(email: str, project: str) -> str:
    """`projects/P/serviceAccounts/EMAIL`, the form Build.service_account requires ("Must be
    of the format projects/{PROJECT_ID}/serviceAccounts/{ACCOUNT}"); P is the account's own
    project for NAME@P.iam.gserviceaccount.com, else `project` (Google's default accounts)."""
    domain = email.partition("@")[2]
    owner = domain.removesuffix(".iam.gserviceaccount.com")
    return f"projects/{owner if owner != domain else project}/serviceAccounts/{email}"


def failure_text(build_id: str, status: str, detail: str, log_url: str) -> str:
    text = f"build {build_id} ended {status}"
    text += f": {detail}" if detail else " (Cloud Build gave no detail)"
    return text + (f"; logs: {log_url}" if log_url else "")


def parse_build_notification(
    data: bytes, attributes: Mapping[str, str]
) -> BuildNotification | None:
    """Decode one `cloud-builds` Pub/Sub message (the Build resource as REST JSON).

    Returns None for builds still running and for builds archdeploy did not start (no
    `archdeploy` tag, or no task encoded in the tags). Pure: no I/O, no cloud SDK.

    Raises:
        ValueError: the payload of a finished build is not a JSON object.
    """
    hinted = attributes.get("status", "")
    if hinted and hinted != SUCCESS and hinted not in FAILED_STATUSES:
        return None  # not finished: skip decoding
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"cloud-builds message is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("cloud-builds message is not a JSON object")
    status = _status_name(doc.get("status")) or hinted
    parts = task_parts_from_tags(doc.get("tags") or [])
    if parts is None or (status != SUCCESS and status not in FAILED_STATUSES):
        return None
    run_id, phase, service = parts
    # The full name, as `submit_build` returned and the store recorded it.
    build_id = str(doc.get("name") or doc.get("id") or attributes.get("buildId", ""))
    task_id = f"{run_id}:{phase}:{service}"
    image = _pinned_result(doc) if status == SUCCESS else ""
    if image:
        return BuildNotification(task_id, run_id, service, build_id, "succeeded", image=image)
    detail = str(doc.get("statusDetail") or "")
    if status == SUCCESS:
        detail = "it reported no image digest (the build has no `images` to push)"
    log_url = str(doc.get("logUrl") or "")
    short_id = build_id.rsplit("/", 1)[-1]
    error = f"building {service}: {failure_text(short_id, status, detail, log_url)}"
    return BuildNotification(task_id, run_id, service, build_id, "failed", error=error)


def task_of_build_event(data: bytes, attributes: Mapping[str, str]) -> tuple[str, str, str] | None:
    """(run_id, task_id, build name or id) of a `cloud-builds` message about one of
    archdeploy's builds, whatever its status; None for anything else (not JSON, not a build,
    not ours). For a dead-lettered build event, whose task must not wait for a deadline."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    parts = task_parts_from_tags(doc.get("tags") or [])
    if parts is None:
        return None
    build = str(doc.get("name") or doc.get("id") or attributes.get("buildId", ""))
    return parts[0], ":".join(parts), build


def _status_name(value: object) -> str:
    if isinstance(value, int):
        return _STATUS_NUMBERS.get(value, "")
    return value if isinstance(value, str) else ""


def _pinned_result(doc: Mapping[str, Any]) -> str:
    results = doc.get("results") or {}
    for built in results.get("images") or []:
        if built.get("digest") and built.get("name"):
            return pin_image(str(built["name"]), str(built["digest"]))
    return ""
