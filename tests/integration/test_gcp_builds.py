"""Builds are regional: reached by their full name, as Cloud Build requires.

The fake Cloud Build routes like Cloud Build: the legacy path (project_id + id) reaches only
`global` ("This method only cancels builds in the "global" region when using the legacy
resource path projects/{projectId}/builds/{id}:cancel", REST reference
projects.builds.cancel), and a regional operation polled through the operations client is
NOT_FOUND (googleapis/google-cloud-python#12123).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as api
from google.cloud.devtools import cloudbuild_v1

from shared.adapters.gcp.deployer import GcpDeployer
from shared.architecture.model import DeploymentSpec
from shared.deployer import Target
from shared.errors import BackendError
from tests.fakes_google.cloudbuild_server import FakeCloudBuild
from tests.fakes_google.fixtures import FAKE_PROJECT, FAKE_REGION

TARGET = Target(run_id="run-1", task_id="run-1:build:ingest")


def _spec(root: Path) -> DeploymentSpec:
    (root / "Dockerfile").write_text("FROM scratch\n")
    return DeploymentSpec(source_path=str(root))


def test_the_legacy_cancel_of_a_regional_build_is_not_found(
    gcp_deployer: GcpDeployer,
    fake_cloudbuild: FakeCloudBuild,
    cloudbuild_client: Any,
    tmp_path: Path,
) -> None:
    fake_cloudbuild.behave("ingest", latency=30)
    name = gcp_deployer.submit_build("ingest", _spec(tmp_path), target=TARGET)
    build_id = name.rsplit("/", 1)[-1]

    # What archdeploy did before: cancel_build(project_id, id), served by `global`
    with pytest.raises(api.NotFound, match="Requested entity was not found"):
        cloudbuild_client.cancel_build(project_id=FAKE_PROJECT, id=build_id)
    assert fake_cloudbuild.builds[build_id].status == cloudbuild_v1.Build.Status.QUEUED


def test_cancel_build_by_its_full_name_cancels_the_regional_build(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    fake_cloudbuild.behave("ingest", latency=30)
    name = gcp_deployer.submit_build("ingest", _spec(tmp_path), target=TARGET)
    assert name.startswith(f"projects/{FAKE_PROJECT}/locations/{FAKE_REGION}/builds/")

    gcp_deployer.cancel_build(name)

    build = fake_cloudbuild.builds[name.rsplit("/", 1)[-1]]
    assert build.status == cloudbuild_v1.Build.Status.CANCELLED


def test_a_bare_build_id_recorded_by_older_versions_is_taken_as_regional(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    fake_cloudbuild.behave("ingest", latency=30)
    build_id = gcp_deployer.submit_build("ingest", _spec(tmp_path), target=TARGET).rsplit("/", 1)[
        -1
    ]

    gcp_deployer.cancel_build(build_id)

    assert fake_cloudbuild.builds[build_id].status == cloudbuild_v1.Build.Status.CANCELLED
    (cancel,) = fake_cloudbuild.calls("CancelBuild")
    assert cancel.name.endswith(f"/locations/{FAKE_REGION}/builds/{build_id}")


def test_cancelling_a_build_that_is_not_there_says_so(gcp_deployer: GcpDeployer) -> None:
    missing = f"projects/{FAKE_PROJECT}/locations/{FAKE_REGION}/builds/nope"
    with pytest.raises(BackendError, match=r"CancelBuild failed: NOT_FOUND"):
        gcp_deployer.cancel_build(missing)


def test_polling_a_regional_build_through_its_operation_is_not_found(
    fake_cloudbuild: FakeCloudBuild, cloudbuild_client: Any
) -> None:
    # How archdeploy waited for a synchronous build before: the operations client sends
    # no location routing header, so Cloud Build looks in `global` (#12123).
    fake_cloudbuild.behave("", latency=5)
    request = cloudbuild_v1.CreateBuildRequest(
        parent=f"projects/{FAKE_PROJECT}/locations/{FAKE_REGION}",
        project_id=FAKE_PROJECT,
        build=cloudbuild_v1.Build(steps=[cloudbuild_v1.BuildStep(name="x")]),
    )
    operation = cloudbuild_client.create_build(request=request)
    with pytest.raises(api.NotFound):
        operation.done()


def test_a_synchronous_build_is_polled_by_get_build_with_its_name(
    gcp_deployer: GcpDeployer, fake_cloudbuild: FakeCloudBuild, tmp_path: Path
) -> None:
    fake_cloudbuild.behave("ingest", latency=0.3)

    image = gcp_deployer.build("ingest", _spec(tmp_path), target=TARGET)

    assert "@sha256:" in image
    gets = fake_cloudbuild.calls("GetBuild")
    assert gets and all(
        get.name.endswith(f"/locations/{FAKE_REGION}/builds/" + get.name.rsplit("/", 1)[-1])
        and not get.id
        for get in gets
    )
    assert fake_cloudbuild.calls("GetOperation") == []


def _deployer_building_as(account: str, build_client: Any, fake_gcs: Any) -> GcpDeployer:
    from tests.fakes_google.fixtures import SOURCE_BUCKET

    fake_gcs.create_bucket(SOURCE_BUCKET)
    return GcpDeployer(
        FAKE_PROJECT,
        FAKE_REGION,
        source_bucket=SOURCE_BUCKET,
        build_client=build_client,
        build_timeout=10,
        retry_base_delay=0.01,
        poll_interval=0.01,
        build_service_account=account,
    )


def test_builds_run_as_the_named_account_and_log_to_cloud_logging_only(
    cloudbuild_client: Any, fake_cloudbuild: FakeCloudBuild, fake_gcs: Any, tmp_path: Path
) -> None:
    deployer = _deployer_building_as("archdeploy-builder", cloudbuild_client, fake_gcs)
    deployer.build("ingest", _spec(tmp_path), target=TARGET)
    deployer.close()

    (create,) = fake_cloudbuild.calls("CreateBuild")
    email = f"archdeploy-builder@{FAKE_PROJECT}.iam.gserviceaccount.com"
    assert create.build.service_account == f"projects/{FAKE_PROJECT}/serviceAccounts/{email}"
    logging = cloudbuild_v1.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY
    assert create.build.options.logging == logging


def test_the_fake_refuses_a_build_account_without_a_log_destination(
    cloudbuild_client: Any,
) -> None:
    email = f"archdeploy-builder@{FAKE_PROJECT}.iam.gserviceaccount.com"
    build = cloudbuild_v1.Build(
        steps=[cloudbuild_v1.BuildStep(name="x")],
        service_account=f"projects/{FAKE_PROJECT}/serviceAccounts/{email}",
    )
    with pytest.raises(api.InvalidArgument, match="CLOUD_LOGGING_ONLY / NONE"):
        cloudbuild_client.create_build(project_id=FAKE_PROJECT, build=build)


def test_a_build_account_the_worker_may_not_act_as_is_refused_naming_it(
    cloudbuild_client: Any, fake_cloudbuild: FakeCloudBuild, fake_gcs: Any, tmp_path: Path
) -> None:
    compute = "123456789012-compute@developer.gserviceaccount.com"
    deployer = _deployer_building_as(compute, cloudbuild_client, fake_gcs)
    with pytest.raises(BackendError, match=r"actAs' denied on service account 123456789012-"):
        deployer.build("ingest", _spec(tmp_path), target=TARGET)
    deployer.close()
    (create,) = fake_cloudbuild.calls("CreateBuild")
    assert create.build.service_account == f"projects/{FAKE_PROJECT}/serviceAccounts/{compute}"
