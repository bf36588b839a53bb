"""GcpDeployer's incremental side with the real clients against the fakes: Cloud Build's
history as the image cache, the fingerprint annotation, rollback by traffic. Assertions
are on what the clients actually sent."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.cloud import run_v2
from google.cloud.devtools import cloudbuild_v1
from google.cloud.devtools.cloudbuild_v1.services.cloud_build.transports import (
    CloudBuildGrpcTransport,
)

from shared.adapters.gcp.deployer import GcpDeployer
from shared.architecture.model import DeploymentSpec, HealthCheck
from shared.deployer import IncrementalDeployer, Target, config_fingerprint
from shared.errors import BackendError
from tests.fakes_google.cloudbuild_server import FakeCloudBuild
from tests.fakes_google.cloudrun_server import FakeCloudRun
from tests.fakes_google.fixtures import FAKE_PROJECT, FAKE_REGION, SOURCE_BUCKET

TAG_RULE = re.compile(r"^[\w][\w.-]{0,127}$", re.ASCII)
REPOSITORY = f"{FAKE_REGION}-docker.pkg.dev/{FAKE_PROJECT}/archdeploy/ingest"
SERVICE = f"projects/{FAKE_PROJECT}/locations/{FAKE_REGION}/services/ingest"
IMAGE_V1 = f"{REPOSITORY}@sha256:" + "1" * 64
IMAGE_V2 = f"{REPOSITORY}@sha256:" + "2" * 64
BY_REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION


def _source(root: Path) -> DeploymentSpec:
    (root / "pkg").mkdir(parents=True)
    (root / "main.py").write_text("print('hello')\n")
    (root / "pkg" / "util.py").write_text("X = 1\n")
    return DeploymentSpec(source_path=str(root))


def _source_tag(fake_cloudbuild: FakeCloudBuild, index: int = -1) -> str:
    tags = fake_cloudbuild.calls("CreateBuild")[index].build.tags
    (tag,) = [t for t in tags if t.startswith("ad-src-")]
    return str(tag)


# -- cached images ----------------------------------------------------------------------


def test_the_deployer_implements_the_incremental_deployer_port(gcp_deployer: GcpDeployer) -> None:
    assert isinstance(gcp_deployer, IncrementalDeployer)


def test_a_build_is_found_again_in_cloud_builds_history_by_its_input_tag(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    # Given a service built once
    spec = _source(tmp_path / "src")
    image = gcp_deployer.build("ingest", spec, target=Target(run_id="run-1"))
    tag = _source_tag(fake_cloudbuild)
    (created,) = fake_cloudbuild.calls("CreateBuild")

    # When the next run asks for an image of the same input
    cached = gcp_deployer.cached_image("ingest", spec, target=Target(run_id="run-2"))

    # Then it is the image that build pushed, pinned by digest
    assert cached == image and image.startswith(REPOSITORY + "@sha256:")
    # And the build was tagged with 32 hex digits of its input digest, its image with 12
    assert re.fullmatch(r"ad-src-[0-9a-f]{32}", tag) and TAG_RULE.match(tag)
    assert list(created.build.images) == [f"{REPOSITORY}:src-{tag[7:19]}"]
    # And Cloud Build was asked for exactly the successful builds with that tag
    (listed,) = fake_cloudbuild.calls("ListBuilds")
    assert listed.filter == f'tags="{tag}" AND status="SUCCESS"'
    assert listed.project_id == FAKE_PROJECT
    assert listed.parent == f"projects/{FAKE_PROJECT}/locations/{FAKE_REGION}"


def test_a_changed_source_has_another_tag_and_no_cache_hit(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    spec = _source(tmp_path / "src")
    gcp_deployer.build("ingest", spec)
    built_tag = _source_tag(fake_cloudbuild)

    (tmp_path / "src" / "pkg" / "util.py").write_text("X = 2\n")
    cached = gcp_deployer.cached_image("ingest", spec)

    assert cached is None
    (listed,) = fake_cloudbuild.calls("ListBuilds")
    asked = re.fullmatch(r'tags="(ad-src-[0-9a-f]{32})" AND status="SUCCESS"', listed.filter)
    assert asked is not None and asked[1] != built_tag


def test_ignored_files_and_file_times_do_not_change_the_input(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    spec = _source(tmp_path / "src")
    (tmp_path / "src" / ".gitignore").write_text("*.log\nout/\n")  # no .gcloudignore: applies
    image = gcp_deployer.build("ingest", spec)

    (tmp_path / "src" / "debug.log").write_text("noise\n")
    (tmp_path / "src" / "out").mkdir()
    (tmp_path / "src" / "out" / "x.bin").write_text("noise\n")
    (tmp_path / "src" / "main.py").touch()

    assert gcp_deployer.cached_image("ingest", spec) == image


def test_the_builder_and_module_path_are_part_of_the_input(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    spec = _source(tmp_path / "src")
    gcp_deployer.build("ingest", spec)
    buildpacks_tag = _source_tag(fake_cloudbuild)

    (tmp_path / "src" / "Dockerfile").write_text("FROM python:3.12-slim\nCOPY . /app\n")
    gcp_deployer.build("ingest", spec)
    docker_tag = _source_tag(fake_cloudbuild)
    (tmp_path / "src" / "pkg" / "main.py").write_text("print('hello')\n")
    gcp_deployer.build("ingest", spec.model_copy(update={"buildable_module_path": "pkg"}))
    module_tag = _source_tag(fake_cloudbuild)

    assert len({buildpacks_tag, docker_tag, module_tag}) == 3


def test_only_successful_builds_count_and_the_newest_wins(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    # Given two successful builds of one input, then a failed one
    spec = _source(tmp_path / "src")
    target = Target(run_id="run-1")
    gcp_deployer.build("ingest", spec, target=target)
    second = gcp_deployer.build("ingest", spec, target=target)
    fake_cloudbuild.behave("ingest", status="FAILURE", status_detail="step 0 exited 1")
    with pytest.raises(BackendError, match="ended FAILURE"):
        gcp_deployer.build("ingest", spec, target=target)
    # (and the first one recorded as created last of the two that succeeded)
    first_id, second_id, _ = fake_cloudbuild.builds
    now = datetime.now(UTC)
    fake_cloudbuild.builds[first_id].create_time = now - timedelta(hours=1)
    fake_cloudbuild.builds[second_id].create_time = now - timedelta(hours=2)

    cached = gcp_deployer.cached_image("ingest", spec)

    # Then the newest successful build's image is the one reused
    first = fake_cloudbuild.builds[first_id]
    assert cached == f"{REPOSITORY}@{first.results.images[0].digest}" and cached != second


def test_a_gs_source_is_never_looked_up(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild
) -> None:
    spec = DeploymentSpec(source_path="gs://team-sources/ingest/v7.tar.gz")

    assert gcp_deployer.cached_image("ingest", spec) is None
    assert fake_cloudbuild.calls("ListBuilds") == []


def test_a_cloud_build_that_does_not_answer_is_a_cache_miss_not_an_error(tmp_path: Path) -> None:
    with grpc.insecure_channel("127.0.0.1:9") as channel:  # nothing listens on port 9
        client = cloudbuild_v1.CloudBuildClient(transport=CloudBuildGrpcTransport(channel=channel))
        deployer = GcpDeployer(
            FAKE_PROJECT,
            FAKE_REGION,
            source_bucket=SOURCE_BUCKET,
            build_client=client,
            retry_attempts=2,
            retry_base_delay=0.01,
        )

        assert deployer.cached_image("ingest", _source(tmp_path / "src")) is None


# -- what is deployed -------------------------------------------------------------------


def _deploy(deployer: GcpDeployer, image: str, **env: str) -> str:
    spec = DeploymentSpec(image=image, environment_vars=env)
    return deployer.deploy_service("ingest", "runner", spec, target=_TARGET)


_TARGET = Target(run_id="run-1", health_check=HealthCheck(port=8080, path="/healthz"))


def test_deployed_reads_the_fingerprint_annotation_and_the_latest_ready_revision(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    url = _deploy(gcp_deployer, IMAGE_V1, MODE="a")

    current = gcp_deployer.deployed("ingest", target=_TARGET)

    service = fake_cloudrun.services[SERVICE]
    spec = DeploymentSpec(image=IMAGE_V1, environment_vars={"MODE": "a"})
    # The fingerprint of the account as the worker names it, not the full email
    wanted = config_fingerprint("runner", spec, _TARGET.health_check)
    assert current is not None
    assert (current.url, current.image, current.fingerprint) == (url, IMAGE_V1, wanted)
    assert current.revision == service.latest_ready_revision
    assert re.fullmatch(rf"{SERVICE}/revisions/ingest-00001-[a-z]{{3}}", current.revision)
    (create,) = fake_cloudrun.calls("CreateService")
    assert create.service.annotations["archdeploy.dev/config-fingerprint"] == wanted
    assert create.service.template.annotations["archdeploy.dev/config-fingerprint"] == wanted


def test_deployed_is_none_for_a_missing_or_unready_service(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    assert gcp_deployer.deployed("ingest") is None

    fake_cloudrun.behave("ingest", readiness_failure="container failed to start")
    with pytest.raises(BackendError):
        _deploy(gcp_deployer, IMAGE_V1)

    assert gcp_deployer.deployed("ingest") is None


# -- rollback ---------------------------------------------------------------------------


def test_rollback_sends_all_traffic_to_the_given_revision_and_returns_the_uri(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    # Given v1 and then v2 deployed, each a revision
    _deploy(gcp_deployer, IMAGE_V1)
    v1 = gcp_deployer.deployed("ingest")
    _deploy(gcp_deployer, IMAGE_V2)
    v2 = gcp_deployer.deployed("ingest")
    assert v1 is not None and v2 is not None and v1.revision != v2.revision

    # When it is rolled back to v1
    url = gcp_deployer.rollback("ingest", v1.revision)

    # Then UpdateService asked for 100% of the traffic on v1's revision, nothing else changed
    rollback = fake_cloudrun.calls("UpdateService")[-1].service
    pinned = run_v2.TrafficTarget(type_=BY_REVISION, revision=_id(v1.revision), percent=100)
    assert list(rollback.traffic) == [pinned]
    assert rollback.name == SERVICE and rollback.template.containers[0].image == IMAGE_V2
    assert url == fake_cloudrun.services[SERVICE].uri
    assert fake_cloudrun.serving(SERVICE) == {_id(v1.revision): 100}
    assert len(fake_cloudrun.revisions[SERVICE]) == 2  # a traffic change makes no revision
    # And what is deployed now is v1's revision, with no fingerprint to trust
    now = gcp_deployer.deployed("ingest")
    assert now is not None and (now.revision, now.fingerprint) == (v1.revision, "")


def test_the_next_deploy_after_a_rollback_serves_its_new_revision_again(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    _deploy(gcp_deployer, IMAGE_V1)
    v1 = gcp_deployer.deployed("ingest")
    _deploy(gcp_deployer, IMAGE_V2)
    assert v1 is not None
    gcp_deployer.rollback("ingest", v1.revision)

    _deploy(gcp_deployer, IMAGE_V2, FIXED="yes")

    now = gcp_deployer.deployed("ingest")
    assert now is not None and now.revision.endswith("/ingest-00003-" + now.revision[-3:])
    assert now.fingerprint != ""
    assert fake_cloudrun.serving(SERVICE) == {_id(now.revision): 100}


def test_rolling_back_to_the_revision_that_serves_already_changes_nothing(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    url = _deploy(gcp_deployer, IMAGE_V1)
    current = gcp_deployer.deployed("ingest")
    assert current is not None

    assert gcp_deployer.rollback("ingest", current.revision) == url
    assert fake_cloudrun.calls("UpdateService") == []


def test_rolling_back_to_an_unknown_revision_names_the_service_and_revision(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    _deploy(gcp_deployer, IMAGE_V1)

    with pytest.raises(BackendError) as raised:
        gcp_deployer.rollback("ingest", "ingest-00042-zzz")

    message = str(raised.value)
    assert message.startswith("rolling back ingest to ingest-00042-zzz: UpdateService failed")
    assert "INVALID_ARGUMENT" in message and not raised.value.retryable
    assert fake_cloudrun.serving(SERVICE) != {"ingest-00042-zzz": 100}


def test_teardown_deletes_the_service_with_its_revisions(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    _deploy(gcp_deployer, IMAGE_V1)
    _deploy(gcp_deployer, IMAGE_V2)

    gcp_deployer.teardown("ingest")

    assert gcp_deployer.deployed("ingest") is None
    assert SERVICE not in fake_cloudrun.services and SERVICE not in fake_cloudrun.revisions


def _id(revision: str) -> str:
    return revision.rsplit("/", 1)[-1]
