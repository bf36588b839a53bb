"""Fixtures: fake Cloud Build, Cloud Run and Cloud Storage servers, and the real clients.

Each fake starts on a free 127.0.0.1 port for one test and stops after it. The Cloud
Build and Cloud Run clients are the real GAPIC clients on an insecure channel to the
fake; Cloud Storage is reached through `STORAGE_EMULATOR_HOST`, which the storage client
honours with anonymous credentials (so no credential lookup, and no warning).

Use from a conftest: `from tests.fakes_google.fixtures import *  # noqa: F403`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.cloud import run_v2
from google.cloud.devtools import cloudbuild_v1
from google.cloud.devtools.cloudbuild_v1.services.cloud_build.transports import (
    CloudBuildGrpcTransport,
)
from google.cloud.run_v2.services.services.transports import ServicesGrpcTransport

from shared.adapters.gcp.deployer import GcpDeployer
from tests.fakes_google.cloudbuild_server import FakeCloudBuild
from tests.fakes_google.cloudrun_server import FakeCloudRun
from tests.fakes_google.gcs_server import FakeGcs

__all__ = [
    "FAKE_PROJECT",
    "FAKE_REGION",
    "RUNTIME_ACCOUNT",
    "SOURCE_BUCKET",
    "cloudbuild_client",
    "cloudrun_client",
    "fake_cloudbuild",
    "fake_cloudrun",
    "fake_gcs",
    "gcp_deployer",
]

FAKE_PROJECT = "archdeploy-fake"
FAKE_REGION = "europe-west1"
SOURCE_BUCKET = "archdeploy-fake-sources"
# What terraform creates and sets as ARCHDEPLOY_DEFAULT_SERVICE_ACCOUNT.
RUNTIME_ACCOUNT = f"archdeploy-runtime@{FAKE_PROJECT}.iam.gserviceaccount.com"


@pytest.fixture
def fake_cloudbuild() -> Iterator[FakeCloudBuild]:
    server = FakeCloudBuild()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fake_cloudrun() -> Iterator[FakeCloudRun]:
    server = FakeCloudRun()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fake_gcs(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGcs]:
    server = FakeGcs()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.start())
    yield server
    server.stop()


@pytest.fixture
def cloudbuild_client(fake_cloudbuild: FakeCloudBuild) -> Iterator[Any]:
    channel = grpc.insecure_channel(fake_cloudbuild.address)
    yield cloudbuild_v1.CloudBuildClient(transport=CloudBuildGrpcTransport(channel=channel))
    channel.close()


@pytest.fixture
def cloudrun_client(fake_cloudrun: FakeCloudRun) -> Iterator[Any]:
    channel = grpc.insecure_channel(fake_cloudrun.address)
    yield run_v2.ServicesClient(transport=ServicesGrpcTransport(channel=channel))
    channel.close()


@pytest.fixture
def gcp_deployer(cloudbuild_client: Any, cloudrun_client: Any, fake_gcs: FakeGcs) -> Iterator[Any]:
    """A `GcpDeployer` on all three fakes, with short timeouts, delays and poll intervals.

    Its storage client is the one it creates itself, through STORAGE_EMULATOR_HOST.
    """
    fake_gcs.create_bucket(SOURCE_BUCKET)
    deployer = GcpDeployer(
        FAKE_PROJECT,
        FAKE_REGION,
        source_bucket=SOURCE_BUCKET,
        build_client=cloudbuild_client,
        run_client=cloudrun_client,
        build_timeout=10,
        deploy_timeout=10,
        retry_attempts=4,
        retry_base_delay=0.01,
        poll_interval=0.01,
        default_service_account=RUNTIME_ACCOUNT,
    )
    yield deployer
    deployer.close()
