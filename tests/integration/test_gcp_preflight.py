"""`archdeploy preflight FILE`: each check passing and failing, against a fake REST server.

The checks go through the real HTTP calls (requests) to `tests.fakes_google.rest_apis`,
which serves the Service Usage, Artifact Registry, IAM, Secret Manager and Resource
Manager paths the real APIs serve.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from shared.adapters.gcp.preflight import BASE_APIS, Endpoints, Preflight, needs_of, session_for
from shared.architecture.loading import parse_architecture
from shared.cli.main import cli
from tests.fakes_google.rest_apis import FakeGoogleApis

PROJECT = "acme-prod"
REGION = "europe-west1"
REPO = f"projects/{PROJECT}/locations/{REGION}/repositories/archdeploy"
OTHER_REPO = f"projects/{PROJECT}/locations/us-central1/repositories/images"
RUNTIME = f"archdeploy-runtime@{PROJECT}.iam.gserviceaccount.com"
INGEST = f"ingest-sa@{PROJECT}.iam.gserviceaccount.com"
BUILDER = f"archdeploy-builder@{PROJECT}.iam.gserviceaccount.com"
SECRET = f"projects/{PROJECT}/secrets/db-password"
ARCH = textwrap.dedent(
    f"""\
    project_id: {PROJECT}
    region: {REGION}
    dataflows:
      orders:
        services:
          ingest:
            service_account: ingest-sa
            deployment:
              source_path: .
              secret_environment_vars:
                - {{name: DB_PASSWORD, value_from: db-password}}
          enrich:
            deployment:
              source_path: .
              region: us-central1
              image_repo: images
    """
)


@pytest.fixture
def google() -> Iterator[FakeGoogleApis]:
    fake = FakeGoogleApis()
    fake.start()
    yield fake
    fake.stop()


def ready(fake: FakeGoogleApis) -> None:
    """Everything in place, as terraform/ leaves it."""
    state = fake.state
    state.enabled |= {(PROJECT, api) for api in (*BASE_APIS, "secretmanager.googleapis.com")}
    writer = {"roles/artifactregistry.writer": {f"serviceAccount:{BUILDER}"}}
    state.repositories = {REPO: dict(writer), OTHER_REPO: dict(writer)}
    act_as = {"iam.serviceAccounts.actAs"}
    state.accounts = {RUNTIME: act_as, INGEST: act_as, BUILDER: act_as}
    readers = {"roles/secretmanager.secretAccessor": {f"serviceAccount:{INGEST}"}}
    state.secrets = {SECRET: readers}


def checks(fake: FakeGoogleApis) -> dict[tuple[str, str], bool]:
    needs = needs_of(
        parse_architecture(ARCH).architecture,
        region="europe-west2",
        image_repo="archdeploy",
        default_service_account="archdeploy-runtime",
        build_service_account="archdeploy-builder",
    )
    found = Preflight(session_for(fake.url), Endpoints.all_at(fake.url)).run(needs)
    return {(check.kind, check.subject): check.ok for check in found}


def test_everything_in_place_passes_every_check(google: FakeGoogleApis) -> None:
    ready(google)
    found = checks(google)

    assert all(found.values()), found
    kinds = sorted({kind for kind, _ in found})
    assert kinds == ["act-as", "api", "push", "repository", "secret"]
    # each service's own repository, in its own region
    assert ("repository", f"us-central1-docker.pkg.dev/{PROJECT}/images") in found
    assert ("repository", f"{REGION}-docker.pkg.dev/{PROJECT}/archdeploy") in found


def test_a_disabled_api_fails(google: FakeGoogleApis) -> None:
    ready(google)
    google.state.enabled.discard((PROJECT, "run.googleapis.com"))
    found = checks(google)
    assert not found[("api", f"run.googleapis.com in {PROJECT}")]
    assert sum(not ok for ok in found.values()) == 1


def test_a_missing_repository_fails_and_so_does_pushing_to_it(google: FakeGoogleApis) -> None:
    ready(google)
    del google.state.repositories[OTHER_REPO]
    found = checks(google)
    assert not found[("repository", f"us-central1-docker.pkg.dev/{PROJECT}/images")]
    assert not found[("push", f"{BUILDER} -> us-central1-docker.pkg.dev/{PROJECT}/images")]
    assert sum(not ok for ok in found.values()) == 2


def test_an_account_the_caller_may_not_act_as_or_that_is_missing_fails(
    google: FakeGoogleApis,
) -> None:
    ready(google)
    google.state.accounts[RUNTIME] = set()
    del google.state.accounts[BUILDER]
    found = checks(google)
    assert not found[("act-as", RUNTIME)]
    assert not found[("act-as", BUILDER)]
    assert found[("act-as", INGEST)]


def test_a_secret_missing_or_unreadable_by_the_account_fails(google: FakeGoogleApis) -> None:
    ready(google)
    google.state.secrets[SECRET] = {}
    assert not checks(google)[("secret", f"{SECRET} for {INGEST}")]

    google.state.projects[PROJECT] = {
        "roles/secretmanager.secretAccessor": {f"serviceAccount:{INGEST}"}
    }
    assert checks(google)[("secret", f"{SECRET} for {INGEST}")]  # granted on the project

    del google.state.secrets[SECRET]
    assert not checks(google)[("secret", f"{SECRET} for {INGEST}")]


def test_a_build_account_without_writer_on_the_repository_fails(google: FakeGoogleApis) -> None:
    ready(google)
    google.state.repositories[REPO] = {}
    found = checks(google)
    assert not found[("push", f"{BUILDER} -> {REGION}-docker.pkg.dev/{PROJECT}/archdeploy")]


def test_the_command_prints_a_table_with_fixes_and_exits_2_on_failure(
    google: FakeGoogleApis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ready(google)
    google.state.enabled.discard((PROJECT, "cloudbuild.googleapis.com"))
    (tmp_path / "arch.yaml").write_text(ARCH)
    monkeypatch.setenv("ARCHDEPLOY_PREFLIGHT_BASE_URL", google.url)
    monkeypatch.setenv("ARCHDEPLOY_DEFAULT_SERVICE_ACCOUNT", "archdeploy-runtime")
    monkeypatch.setenv("ARCHDEPLOY_BUILD_SERVICE_ACCOUNT", "archdeploy-builder")

    result = CliRunner().invoke(cli, ["preflight", str(tmp_path / "arch.yaml")])

    assert result.exit_code == 2, result.output
    assert "FAIL  api" in result.output
    assert f"gcloud services enable cloudbuild.googleapis.com --project {PROJECT}" in result.output

    google.state.enabled.add((PROJECT, "cloudbuild.googleapis.com"))
    result = CliRunner().invoke(cli, ["preflight", str(tmp_path / "arch.yaml")])
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output


def test_the_fake_refuses_wildcard_permissions_as_iam_does(google: FakeGoogleApis) -> None:
    import requests

    url = f"{google.url}/v1/projects/-/serviceAccounts/{RUNTIME}:testIamPermissions"
    answer = requests.post(url, json={"permissions": ["iam.*"]}, timeout=5)
    assert answer.status_code == 400
