"""GcpDeployer with the real Cloud Build, Cloud Run and Cloud Storage clients, against the
local fakes in tests.fakes_google. Assertions are on what the clients actually sent."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.cloud.devtools import cloudbuild_v1

from shared.adapters.gcp.cloud_build import task_id_from_build
from shared.adapters.gcp.deployer import GcpDeployer, parse_build_notification
from shared.adapters.gcp.source_archive import pack_source
from shared.architecture.model import DeploymentSpec, HealthCheck, SecretEnvVar
from shared.deployer import BuildSubmitter, ContainerDeployer, Target
from shared.errors import BackendError
from tests.fakes_google.cloudbuild_server import FakeCloudBuild, notification
from tests.fakes_google.cloudrun_server import FakeCloudRun
from tests.fakes_google.fixtures import FAKE_PROJECT, FAKE_REGION, SOURCE_BUCKET
from tests.fakes_google.gcs_server import FakeGcs

TAG_RULE = re.compile(r"^[\w][\w.-]{0,127}$", re.ASCII)
PINNED = re.compile(r"^[^@]+@sha256:[0-9a-f]{64}$")
BUILD_TARGET = Target(run_id="run-1", task_id="run-1:build:ingest")
IMAGE = "europe-west1-docker.pkg.dev/archdeploy-fake/archdeploy/ingest@sha256:" + "a" * 64


def _source(root: Path, *, dockerfile: bool = True, module: str = "") -> Path:
    app = root / module if module else root
    app.mkdir(parents=True, exist_ok=True)
    if dockerfile:
        (app / "Dockerfile").write_text("FROM python:3.11-slim\nCOPY . /app\n")
    (app / "main.py").write_text("print('hello')\n")
    (app / "pkg").mkdir()
    (app / "pkg" / "util.py").write_text("X = 1\n")
    return root


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def _deployer(build_client: Any, run_client: Any, **settings: Any) -> GcpDeployer:
    options: dict[str, Any] = {
        "source_bucket": SOURCE_BUCKET,
        "build_client": build_client,
        "run_client": run_client,
        "retry_attempts": 4,
        "retry_base_delay": 0.01,
        "poll_interval": 0.01,
    }
    return GcpDeployer(FAKE_PROJECT, FAKE_REGION, **(options | settings))


# -- building ---------------------------------------------------------------------------


def test_the_deployer_implements_the_container_deployer_port(gcp_deployer: GcpDeployer) -> None:
    assert isinstance(gcp_deployer, ContainerDeployer)


def test_a_service_with_a_dockerfile_is_built_by_docker_from_its_staged_source(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, fake_gcs: FakeGcs, tmp_path: Path
) -> None:
    # Given a source tree with a Dockerfile and a config template from elsewhere
    root = _source(tmp_path / "src")
    template = tmp_path / "settings.prod.yaml"
    template.write_text("mode: prod\n")
    spec = DeploymentSpec(source_path=str(root), config_templates={str(template): "settings.yaml"})

    # When it is built
    image = gcp_deployer.build("ingest", spec, target=BUILD_TARGET)

    # Then Cloud Build got one docker step that builds and pushes the tagged image
    (request,) = fake_cloudbuild.calls("CreateBuild")
    assert request.parent == f"projects/{FAKE_PROJECT}/locations/{FAKE_REGION}"
    assert request.project_id == FAKE_PROJECT
    build = request.build
    source = build.source.storage_source
    assert source.object_.startswith("sources/ingest/") and source.object_.endswith(".tar.gz")
    # The image is tagged by the build input's digest, which the build's tags carry too.
    (src_tag,) = [t for t in build.tags if t.startswith("ad-src-")]
    tagged = f"{FAKE_REGION}-docker.pkg.dev/{FAKE_PROJECT}/archdeploy/ingest:src-{src_tag[7:19]}"
    (step,) = build.steps
    assert step.name == "gcr.io/cloud-builders/docker"
    assert step.args[:3] == ["build", "-t", tagged] and step.args[-1] == "."
    assert step.dir_ == ""
    assert list(build.images) == [tagged]
    assert list(build.tags) == [
        "archdeploy",
        "ad-run-run-1",
        "ad-phase-build",
        "ad-svc-ingest",
        src_tag,
    ]
    assert build.timeout.total_seconds() == gcp_deployer.build_timeout
    # And the source is in the bucket, content-addressed, holding the tree plus the template
    sha = source.object_.removeprefix("sources/ingest/").removesuffix(".tar.gz")
    assert source.bucket == SOURCE_BUCKET and len(sha) == 64
    files = _members(fake_gcs.object(SOURCE_BUCKET, source.object_).data)
    assert files == {
        "Dockerfile": (root / "Dockerfile").read_bytes(),
        "main.py": b"print('hello')\n",
        "pkg/util.py": b"X = 1\n",
        "settings.yaml": b"mode: prod\n",
    }
    # And the image comes back pinned by the digest Cloud Build reported
    (finished,) = fake_cloudbuild.builds.values()
    assert image == tagged.rsplit(":", 1)[0] + "@" + finished.results.images[0].digest


def test_a_service_without_a_dockerfile_is_built_by_buildpacks_in_its_module_path(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    root = _source(tmp_path, dockerfile=False, module="services/api")
    spec = DeploymentSpec(source_path=str(root), buildable_module_path="services/api")

    gcp_deployer.build("api", spec, target=Target(run_id="r", task_id="r:build:api"))

    (request,) = fake_cloudbuild.calls("CreateBuild")
    (step,) = request.build.steps
    image = request.build.images[0]
    assert step.name == "gcr.io/k8s-skaffold/pack"
    assert step.entrypoint == "pack"
    assert step.args[:6] == [
        "build",
        image,
        "--builder",
        "gcr.io/buildpacks/builder:google-22",
        "--path",
        "services/api",
    ]


def test_a_dockerfile_in_the_module_path_is_built_there(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    root = _source(tmp_path, module="services/api")
    spec = DeploymentSpec(source_path=str(root), buildable_module_path="services/api/")

    gcp_deployer.build("api", spec, target=Target(run_id="r", task_id="r:build:api"))

    (step,) = fake_cloudbuild.calls("CreateBuild")[0].build.steps
    assert step.name == "gcr.io/cloud-builders/docker"
    assert step.dir_ == "services/api"


def test_an_explicit_image_name_is_built_and_pinned_by_the_reported_digest(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    digest = "sha256:" + "b" * 64
    fake_cloudbuild.behave("ingest", digest=digest)
    spec = DeploymentSpec(source_path=str(_source(tmp_path)), image="localhost:5000/team/ingest:v1")

    image = gcp_deployer.build("ingest", spec, target=BUILD_TARGET)

    assert list(fake_cloudbuild.calls("CreateBuild")[0].build.images) == [spec.image]
    assert image == f"localhost:5000/team/ingest@{digest}"


def test_an_unchanged_source_is_uploaded_only_once(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, fake_gcs: FakeGcs, tmp_path: Path
) -> None:
    spec = DeploymentSpec(source_path=str(_source(tmp_path)))

    first = gcp_deployer.build("ingest", spec, target=BUILD_TARGET)
    time.sleep(0.01)
    (tmp_path / "main.py").touch()  # a new mtime is not a new source
    second = gcp_deployer.build("ingest", spec, target=BUILD_TARGET)

    objects = [r.build.source.storage_source.object_ for r in fake_cloudbuild.calls("CreateBuild")]
    assert objects[0] == objects[1]
    assert len(fake_gcs.uploads()) == 1
    assert first.split("@")[0] == second.split("@")[0]


def test_ignored_files_stay_out_of_the_source_archive(tmp_path: Path) -> None:
    root = _source(tmp_path)
    for path in (".git/HEAD", "pkg/__pycache__/util.pyc", ".venv/bin/python", "docs/x.md"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("ignored\n")
    kept_or_not = ("app.log", "pkg/deep.log", "keep.log", "secrets/key.pem", "docsy.md", "out/x")
    for path in kept_or_not:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("?\n")
    (root / ".gitignore").write_text("out/\n")
    rules = ["#!include:.gitignore", "# logs", "*.log", "!keep.log", "secrets/"]
    (root / ".gcloudignore").write_text("\n".join(rules) + "\n")
    (root / ".dockerignore").write_text("docs\n")

    names = pack_source(root).names

    assert names == (
        ".dockerignore",
        ".gcloudignore",
        ".gitignore",
        "Dockerfile",
        "docsy.md",
        "keep.log",
        "main.py",
        "pkg/util.py",
    )


def test_the_source_archive_depends_only_on_paths_contents_and_modes(tmp_path: Path) -> None:
    first = pack_source(_source(tmp_path / "a"))
    second_root = _source(tmp_path / "b")
    (second_root / "main.py").touch()

    second = pack_source(second_root)

    assert first.data == second.data and first.sha256 == second.sha256
    (second_root / "main.py").chmod(0o755)
    assert pack_source(second_root).sha256 != first.sha256


def test_a_gs_source_is_built_as_it_is_without_an_upload(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, fake_gcs: FakeGcs, tmp_path: Path
) -> None:
    archive = pack_source(_source(tmp_path, dockerfile=False))
    fake_gcs.put("team-sources", "ingest/v7.tar.gz", archive.data)
    spec = DeploymentSpec(source_path="gs://team-sources/ingest/v7.tar.gz")

    gcp_deployer.build("ingest", spec, target=BUILD_TARGET)

    (request,) = fake_cloudbuild.calls("CreateBuild")
    source = request.build.source.storage_source
    assert (source.bucket, source.object_) == ("team-sources", "ingest/v7.tar.gz")
    assert request.build.steps[0].name == "gcr.io/k8s-skaffold/pack"
    assert request.build.images[0].endswith(f":{archive.sha256[:12]}")
    assert fake_gcs.uploads() == []


def test_a_missing_source_bucket_is_reported_with_how_to_create_it(
    cloudbuild_client: Any, cloudrun_client: Any, fake_gcs: FakeGcs, tmp_path: Path
) -> None:
    deployer = _deployer(cloudbuild_client, cloudrun_client, source_bucket="gs://nowhere")
    spec = DeploymentSpec(source_path=str(_source(tmp_path)))

    with pytest.raises(BackendError) as caught:
        deployer.build("ingest", spec, target=BUILD_TARGET)
    deployer.close()

    message = str(caught.value)
    assert "building ingest" in message and "gs://nowhere does not exist" in message
    assert "gcloud storage buckets create gs://nowhere" in message
    assert not caught.value.retryable


@pytest.mark.parametrize(
    ("source", "error"),
    [("nope", r"source_path '.*nope' is not a directory"), ("", r"the spec has no source_path")],
    ids=["missing", "empty"],
)
def test_a_missing_source_directory_fails_before_any_call(
    gcp_deployer: GcpDeployer,
    fake_cloudbuild: FakeCloudBuild,
    fake_gcs: FakeGcs,
    tmp_path: Path,
    source: str,
    error: str,
) -> None:
    spec = DeploymentSpec(source_path=str(tmp_path / source) if source else "")

    with pytest.raises(BackendError, match=f"^building ingest: {error}"):
        gcp_deployer.build("ingest", spec, target=BUILD_TARGET)
    assert fake_cloudbuild.requests == [] and fake_gcs.requests == []


@pytest.mark.parametrize(
    ("status", "detail"),
    [("FAILURE", "Build step 0 exited with 1"), ("TIMEOUT", "Build timed out")],
    ids=["failure", "timeout"],
)
def test_a_failed_build_raises_with_its_id_status_detail_and_log_url(
    gcp_deployer: GcpDeployer,
    fake_cloudbuild: FakeCloudBuild,
    tmp_path: Path,
    status: str,
    detail: str,
) -> None:
    fake_cloudbuild.behave("ingest", status=status, status_detail=detail, latency=0.05)
    spec = DeploymentSpec(source_path=str(_source(tmp_path)))

    with pytest.raises(BackendError) as caught:
        gcp_deployer.build("ingest", spec, target=BUILD_TARGET)

    (build,) = fake_cloudbuild.builds.values()
    message = str(caught.value)
    assert message.startswith("building ingest: ")
    assert f"build {build.id} ended {status}: {detail}" in message
    assert f"logs: {build.log_url}" in message and build.log_url.startswith("https://")
    assert not caught.value.retryable


def test_a_build_that_outlasts_the_timeout_is_cancelled(
    cloudbuild_client: Any,
    cloudrun_client: Any,
    fake_cloudbuild: FakeCloudBuild,
    fake_gcs: FakeGcs,
    tmp_path: Path,
) -> None:
    fake_gcs.create_bucket(SOURCE_BUCKET)
    fake_cloudbuild.behave("ingest", latency=30)
    deployer = _deployer(cloudbuild_client, cloudrun_client, build_timeout=0.2)
    spec = DeploymentSpec(source_path=str(_source(tmp_path)))

    with pytest.raises(BackendError, match=r"did not finish within 0\.2s and was cancelled"):
        deployer.build("ingest", spec, target=BUILD_TARGET)
    deployer.close()

    (cancel,) = fake_cloudbuild.calls("CancelBuild")
    (build,) = fake_cloudbuild.builds.values()
    # By its full name only: the legacy path (project_id, id) reaches `global`, not the region
    assert (cancel.name, cancel.id, cancel.project_id) == (build.name, "", "")
    assert build.name.startswith(f"projects/{FAKE_PROJECT}/locations/{FAKE_REGION}/builds/")
    assert build.status == cloudbuild_v1.Build.Status.CANCELLED
    # polled by GetBuild(name), never through the operation (google-cloud-python#12123)
    assert {get.name for get in fake_cloudbuild.calls("GetBuild")} == {build.name}
    assert fake_cloudbuild.calls("GetOperation") == []


def test_transient_unavailable_errors_are_retried_until_the_build_is_created(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    fake_cloudbuild.behave("ingest", transient_errors=2)
    spec = DeploymentSpec(source_path=str(_source(tmp_path)))

    image = gcp_deployer.build("ingest", spec, target=BUILD_TARGET)

    assert PINNED.match(image)
    assert len(fake_cloudbuild.calls("CreateBuild")) == 3


def test_a_quota_error_that_outlasts_the_retries_is_retryable(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    fake_cloudbuild.behave("ingest", transient_errors=99, transient_code=exhausted)
    spec = DeploymentSpec(source_path=str(_source(tmp_path)))

    with pytest.raises(BackendError) as caught:
        gcp_deployer.build("ingest", spec, target=BUILD_TARGET)

    assert caught.value.retryable
    assert "building ingest: CreateBuild failed: RESOURCE_EXHAUSTED" in str(caught.value)
    assert "gave up after 4 attempts" in str(caught.value)
    assert len(fake_cloudbuild.calls("CreateBuild")) == 4


def test_an_invalid_argument_is_not_retried_and_not_retryable(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    fake_cloudbuild.behave("ingest", error_code=invalid, error_message="invalid image name")
    spec = DeploymentSpec(source_path=str(_source(tmp_path)))

    with pytest.raises(BackendError) as caught:
        gcp_deployer.build("ingest", spec, target=BUILD_TARGET)

    assert not caught.value.retryable
    assert str(caught.value) == (
        "building ingest: CreateBuild failed: INVALID_ARGUMENT: invalid image name"
    )
    assert len(fake_cloudbuild.calls("CreateBuild")) == 1


# -- the asynchronous path --------------------------------------------------------------


def test_submit_build_returns_the_build_id_without_waiting(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    fake_cloudbuild.behave("ingest", latency=30)
    spec = DeploymentSpec(source_path=str(_source(tmp_path)))

    started = time.monotonic()
    build_id = gcp_deployer.submit_build("ingest", spec, target=BUILD_TARGET)

    assert time.monotonic() - started < 5
    (build,) = fake_cloudbuild.builds.values()
    assert build_id == build.name  # projects/P/locations/L/builds/ID: reaches the region
    assert build.status == cloudbuild_v1.Build.Status.QUEUED
    assert fake_cloudbuild.calls("GetOperation") == []


def test_a_submitted_build_is_cancelled_by_its_full_name(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    # Given a build submitted and still running
    assert isinstance(gcp_deployer, BuildSubmitter)
    fake_cloudbuild.behave("ingest", latency=30)
    spec = DeploymentSpec(source_path=str(_source(tmp_path)))
    name = gcp_deployer.submit_build("ingest", spec, target=BUILD_TARGET)
    # When the run that submitted it cancels it, by the full name submit_build returned
    gcp_deployer.cancel_build(name)
    # Then Cloud Build was asked to cancel that build where it runs, and it ended cancelled
    (cancel,) = fake_cloudbuild.calls("CancelBuild")
    assert cancel.name == name and name.startswith(f"projects/{FAKE_PROJECT}/locations/")
    build_id = name.rsplit("/", 1)[1]
    assert fake_cloudbuild.builds[build_id].status == cloudbuild_v1.Build.Status.CANCELLED


@pytest.mark.parametrize(
    "task_id",
    ["run-1:build:ingest", "2024-05-01T10:00:00Z.7f3a:build:ingest_v2", "rün/ø:build:a.b"],
    ids=["plain", "colons-and-dots", "non-ascii"],
)
def test_the_task_id_round_trips_through_valid_build_tags(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path, task_id: str
) -> None:
    spec = DeploymentSpec(source_path=str(_source(tmp_path)), image="gcr.io/p/ingest:1")
    run_id = task_id.rsplit(":", 2)[0]

    build_id = gcp_deployer.submit_build("ingest", spec, target=Target(run_id, task_id=task_id))

    tags = list(fake_cloudbuild.calls("CreateBuild")[0].build.tags)
    assert all(TAG_RULE.match(tag) for tag in tags), tags
    assert task_id_from_build(fake_cloudbuild.builds[build_id.rsplit("/", 1)[-1]]) == task_id


def test_a_successful_build_notification_names_the_task_and_the_pinned_image(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    published: list[Any] = []
    fake_cloudbuild.on_terminal = published.append
    spec = DeploymentSpec(source_path=str(_source(tmp_path)))

    image = gcp_deployer.build("ingest", spec, target=BUILD_TARGET)
    data, attributes = notification(published[-1])

    parsed = parse_build_notification(data, attributes)
    assert parsed is not None
    assert (parsed.task_id, parsed.run_id, parsed.service) == (
        "run-1:build:ingest",
        "run-1",
        "ingest",
    )
    assert parsed.build_id == published[-1].name  # as submit_build returned it
    assert (parsed.status, parsed.image, parsed.error) == ("succeeded", image, "")


def test_a_failed_build_notification_carries_the_detail_and_log_url(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    published: list[Any] = []
    fake_cloudbuild.on_terminal = published.append
    fake_cloudbuild.behave("ingest", status="FAILURE", status_detail="step 0 exited with 2")
    spec = DeploymentSpec(source_path=str(_source(tmp_path)))

    build_id = gcp_deployer.submit_build("ingest", spec, target=BUILD_TARGET)
    parsed = parse_build_notification(*notification(published[-1]))

    assert parsed is not None
    assert (parsed.status, parsed.build_id, parsed.image) == ("failed", build_id, "")
    short_id = build_id.rsplit("/", 1)[-1]
    assert parsed.error.startswith(f"building ingest: build {short_id} ended FAILURE: step 0")
    assert published[-1].log_url in parsed.error


def test_notifications_of_running_or_foreign_builds_are_ignored(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    fake_cloudbuild.behave("ingest", latency=30)
    spec = DeploymentSpec(source_path=str(_source(tmp_path)))
    build_id = gcp_deployer.submit_build("ingest", spec, target=BUILD_TARGET)
    queued = fake_cloudbuild.builds[build_id.rsplit("/", 1)[-1]]
    foreign = cloudbuild_v1.Build(id="f-1", status="SUCCESS", tags=["nightly", "ad-svc-x"])

    assert parse_build_notification(*notification(queued)) is None
    assert parse_build_notification(*notification(foreign)) is None


def test_a_notification_with_integer_enums_and_no_attributes_is_understood(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    published: list[Any] = []
    fake_cloudbuild.on_terminal = published.append
    spec = DeploymentSpec(source_path=str(_source(tmp_path)))
    image = gcp_deployer.build("ingest", spec, target=BUILD_TARGET)
    data = cloudbuild_v1.Build.to_json(published[-1]).encode()  # "status": 3

    parsed = parse_build_notification(data, {})

    assert parsed is not None and (parsed.status, parsed.image) == ("succeeded", image)


def test_a_malformed_notification_is_an_error_not_a_silent_skip() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        parse_build_notification(b"\xff{", {"status": "SUCCESS"})


# -- deploying --------------------------------------------------------------------------


def test_a_first_deploy_creates_the_service_and_the_next_one_updates_it(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    spec = DeploymentSpec(image=IMAGE)

    first = gcp_deployer.deploy_service("ingest", "", spec)
    second = gcp_deployer.deploy_service("ingest", "", spec.model_copy(update={"cpu": "2"}))

    name = f"projects/{FAKE_PROJECT}/locations/{FAKE_REGION}/services/ingest"
    assert [method for method, _ in fake_cloudrun.requests if method != "GetOperation"] == [
        "GetService",
        "CreateService",
        "GetService",
        "UpdateService",
    ]
    (create,) = fake_cloudrun.calls("CreateService")
    assert create.parent == f"projects/{FAKE_PROJECT}/locations/{FAKE_REGION}"
    assert create.service_id == "ingest" and create.service.name == ""
    (update,) = fake_cloudrun.calls("UpdateService")
    assert update.service.name == name
    assert update.service.template.containers[0].resources.limits["cpu"] == "2"
    assert first == second == fake_cloudrun.services[name].uri
    assert re.fullmatch(r"https://ingest-[0-9a-f]{10}-ew\.a\.run\.app", first)


def test_the_service_template_carries_the_whole_spec(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    spec = DeploymentSpec(
        image=IMAGE,
        environment_vars={"ZONE": "b", "APP_MODE": "prod", "PROJECT_ID": FAKE_PROJECT},
        secret_environment_vars=[
            SecretEnvVar(name="DB_PASSWORD", value_from="db-password"),
            SecretEnvVar(name="API_KEY", value_from="projects/p/secrets/api-key/versions/3"),
        ],
        cpu="1",
        memory="512Mi",
        min_instances=1,
        max_instances=3,
    )
    target = Target(
        run_id="Run_2024.05",
        labels={"Team": "Data Eng", "cost_center": "42"},
        health_check=HealthCheck(port=8081, path="/healthz"),
    )
    runner = f"runner@{FAKE_PROJECT}.iam.gserviceaccount.com"
    fake_cloudrun.grant_secret(f"projects/{FAKE_PROJECT}/secrets/db-password", runner)
    fake_cloudrun.grant_secret("projects/p/secrets/api-key", runner)

    gcp_deployer.deploy_service("ingest", "runner", spec, target=target)

    service = fake_cloudrun.calls("CreateService")[0].service
    (container,) = service.template.containers
    assert container.image == IMAGE
    plain = [(env.name, env.value) for env in container.env if not env.value_source]
    assert plain == [("APP_MODE", "prod"), ("PROJECT_ID", FAKE_PROJECT), ("ZONE", "b")]
    secrets = {env.name: env for env in container.env if env.value_source}
    assert set(secrets) == {"API_KEY", "DB_PASSWORD"}
    for env in secrets.values():
        assert env.value == ""  # a reference, never the value
    ref = secrets["DB_PASSWORD"].value_source.secret_key_ref
    assert (ref.secret, ref.version) == ("db-password", "latest")
    pinned = secrets["API_KEY"].value_source.secret_key_ref
    assert (pinned.secret, pinned.version) == ("projects/p/secrets/api-key", "3")
    assert dict(container.resources.limits) == {"cpu": "1", "memory": "512Mi"}
    assert container.resources.cpu_idle  # request-based billing, as when nothing is set
    assert service.template.max_instance_request_concurrency == 0  # Cloud Run's default
    assert [p.container_port for p in container.ports] == [8081]
    assert container.startup_probe.http_get.path == "/healthz"
    scaling = service.template.scaling
    assert (scaling.min_instance_count, scaling.max_instance_count) == (1, 3)
    assert service.template.service_account == f"runner@{FAKE_PROJECT}.iam.gserviceaccount.com"
    assert dict(service.labels) == {
        "archdeploy-run": "run_2024-05",
        "cost_center": "42",
        "team": "data-eng",
    }


def test_a_full_service_account_email_is_used_as_given(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    account = "deployer@other-project.iam.gserviceaccount.com"

    gcp_deployer.deploy_service("ingest", account, DeploymentSpec(image=IMAGE))

    assert fake_cloudrun.calls("CreateService")[0].service.template.service_account == account


def test_the_spec_region_and_target_project_choose_where_the_service_runs(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    spec = DeploymentSpec(image=IMAGE, region="us-central1")

    url = gcp_deployer.deploy_service("ingest", "", spec, target=Target(project_id="elsewhere"))

    assert fake_cloudrun.calls("CreateService")[0].parent == (
        "projects/elsewhere/locations/us-central1"
    )
    assert url.endswith("-uc.a.run.app")


@pytest.mark.parametrize("as_operation_error", [True, False], ids=["lro-error", "lro-response"])
def test_a_service_that_does_not_become_ready_raises_with_cloud_runs_reason(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun, as_operation_error: bool
) -> None:
    why = "The user-provided container failed to start and listen on the port PORT=8080"
    fake_cloudrun.behave(
        "ingest", readiness_failure=why, readiness_as_operation_error=as_operation_error
    )

    with pytest.raises(BackendError) as caught:
        gcp_deployer.deploy_service("ingest", "", DeploymentSpec(image=IMAGE))

    message = str(caught.value)
    assert message.startswith("deploying ingest: ")
    assert "did not become ready" in message and why in message
    assert "CONDITION_FAILED" in message and "HEALTH_CHECK_CONTAINER_ERROR" in message
    assert not caught.value.retryable


def test_a_deploy_waits_for_a_slow_rollout(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    fake_cloudrun.behave("ingest", latency=0.2)

    url = gcp_deployer.deploy_service("ingest", "", DeploymentSpec(image=IMAGE))

    assert url.startswith("https://ingest-")
    assert len(fake_cloudrun.calls("GetOperation")) >= 2


def test_transient_errors_on_create_service_are_retried(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    fake_cloudrun.behave("ingest", transient_errors=2, transient_code=grpc.StatusCode.UNAVAILABLE)

    gcp_deployer.deploy_service("ingest", "", DeploymentSpec(image=IMAGE))

    assert len(fake_cloudrun.calls("CreateService")) == 3


def test_a_permission_error_on_create_service_is_reported_once_and_not_retryable(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    denied = grpc.StatusCode.PERMISSION_DENIED
    fake_cloudrun.behave("ingest", error_code=denied, error_message="run.services.create denied")

    with pytest.raises(BackendError) as caught:
        gcp_deployer.deploy_service("ingest", "", DeploymentSpec(image=IMAGE))

    assert str(caught.value) == (
        "deploying ingest: CreateService failed: PERMISSION_DENIED: run.services.create denied"
    )
    assert not caught.value.retryable
    assert len(fake_cloudrun.calls("CreateService")) == 1


def test_a_name_cloud_run_would_refuse_fails_before_any_call(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    with pytest.raises(BackendError, match="'Ingest_V2' is not a valid Cloud Run service name"):
        gcp_deployer.deploy_service("Ingest_V2", "", DeploymentSpec(image=IMAGE))
    assert fake_cloudrun.requests == []


def test_teardown_deletes_the_service_and_is_idempotent(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    gcp_deployer.deploy_service("ingest", "", DeploymentSpec(image=IMAGE))

    gcp_deployer.teardown("ingest")
    gcp_deployer.teardown("ingest")

    name = f"projects/{FAKE_PROJECT}/locations/{FAKE_REGION}/services/ingest"
    assert [call.name for call in fake_cloudrun.calls("DeleteService")] == [name, name]
    assert fake_cloudrun.services == {}


def test_build_and_deploy_runs_the_image_it_built(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun, tmp_path: Path
) -> None:
    spec = DeploymentSpec(source_path=str(_source(tmp_path)))

    url = gcp_deployer.build_and_deploy("ingest", "", spec, target=BUILD_TARGET)

    (create,) = fake_cloudrun.calls("CreateService")
    assert PINNED.match(create.service.template.containers[0].image)
    assert url.startswith("https://ingest-")
    assert spec.image == ""  # the caller's spec is not changed


def test_importing_and_constructing_the_deployer_loads_no_google_sdk() -> None:
    code = (
        "import sys\n"
        "from shared.adapters.gcp.deployer import GcpDeployer\n"
        "GcpDeployer('p', 'europe-west1', source_bucket='b')\n"
        "namespaces = {'google', 'google.cloud'}  # created by the SDKs' *-nspkg.pth files\n"
        "print([m for m in sys.modules if m.startswith(('google', 'grpc', 'proto'))\n"
        "       and m not in namespaces])\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_source_is_streamed_in_chunks_and_staged_byte_for_byte_as_packed(
    fake_gcs: FakeGcs, tmp_path: Path
) -> None:
    import random

    from shared.adapters.gcp.retry import RetryPolicy
    from shared.adapters.gcp.source_archive import SourceStager

    fake_gcs.create_bucket(SOURCE_BUCKET)
    source = _source(tmp_path)
    # incompressible, so the archive spans several 256 KiB chunks
    (source / "blob.bin").write_bytes(random.Random(7).randbytes(700 * 1024))
    import google.cloud.storage as storage

    stager = SourceStager(
        lambda: storage.Client(project=FAKE_PROJECT),
        SOURCE_BUCKET,
        RetryPolicy(attempts=2, base_delay=0.01),
        region=FAKE_REGION,
        chunk_bytes=256 * 1024,
    )

    staged = stager.stage("ingest", DeploymentSpec(source_path=str(source)), "building ingest")

    expected = pack_source(source)
    stored = fake_gcs.objects[(SOURCE_BUCKET, staged.object_name)]
    assert stored.data == expected.data and staged.sha256 == expected.sha256
    assert len(fake_gcs.chunks) >= 3 and max(fake_gcs.chunks) <= 256 * 1024


def test_down_deletes_each_service_in_the_files_project_and_its_region(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    # Given an architecture in another project than archdeploy's own, one service elsewhere
    from shared.architecture.model import Architecture
    from shared.cli.remote import tear_down

    arch = Architecture.model_validate(
        {
            "project_id": "acme-prod",
            "region": "us-east1",
            "dataflows": {
                "f": {
                    "services": {
                        "a": {"deployment": {"image": IMAGE}},
                        "b": {"deployment": {"image": IMAGE, "region": "asia-east1"}},
                    }
                }
            },
        }
    )
    said: list[str] = []
    # When `down` tears them down
    summary = tear_down(
        gcp_deployer, arch, list(arch.dataflows["f"].services.values()), say=said.append
    )
    # Then each delete went where `up` deploys it, not to the deployer's own project
    assert [call.name for call in fake_cloudrun.calls("DeleteService")] == [
        "projects/acme-prod/locations/us-east1/services/a",
        "projects/acme-prod/locations/asia-east1/services/b",
    ]
    assert summary == "2 services torn down" and "acme-prod, asia-east1" in said[1]
