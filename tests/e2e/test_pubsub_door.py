"""The dispatcher's Pub/Sub door under functions-framework: DeployRequest messages pushed
as Eventarc and the emulator deliver them, with the architecture inline, in Cloud Storage
(a fake GCS server) or in a GitHub commit (a fake GitHub API).

No worker is subscribed: build tasks stay on the function's in-process bus, where the
tests read them; the run store is the function's SQLite file.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import functions_framework
import pytest

from shared.core.dispatcher import run_id_for
from shared.core.runtime import Runtime
from shared.messages import TOPIC_TASKS, DeployRequest, RunStatus, TaskMessage
from tests.e2e.dispatcher_runtime import fresh_dispatcher_runtime
from tests.fakes_github import FakeGitHub, fake_github
from tests.fakes_google.gcs_server import FakeGcs

__all__ = ["fake_github"]

MAIN = Path(__file__).resolve().parents[2] / "functions" / "dispatcher" / "main.py"
PUSH_PATH = "/projects/archdeploy-test/topics/archdeploy-requests"
SHA = "c" * 40
ARCHITECTURE = """\
project_id: acme-dev
region: europe-west1
dataflows:
  orders:
    services:
      ingest:
        service_account: ingest-sa
        deployment: {source_path: services/ingest}
      enrich:
        service_account: enrich-sa
        deployment: {source_path: services/enrich}
"""


@pytest.fixture
def rt(tmp_path: Path, fake_github: FakeGitHub, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("ARCHDEPLOY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("ARCHDEPLOY_GITHUB_API_URL", fake_github.url)
    monkeypatch.setenv("ARCHDEPLOY_GITHUB_TOKEN", fake_github.token or "")
    yield from fresh_dispatcher_runtime()


@pytest.fixture
def client(rt: Runtime) -> Any:
    app = functions_framework.create_app(target="dispatch", source=str(MAIN))
    return app.test_client()


def publish(client: Any, request: DeployRequest | bytes, message_id: str = "1001") -> Any:
    data = request if isinstance(request, bytes) else request.model_dump_json().encode()
    body = {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": {},
            "messageId": message_id,
            "publishTime": "2026-11-24T01:00:00.000Z",
        },
        "subscription": "projects/archdeploy-test/subscriptions/archdeploy-requests-dispatcher",
    }
    return client.post(PUSH_PATH, json=body)


def tasks(rt: Runtime) -> list[TaskMessage]:
    published = rt.bus.published  # type: ignore[attr-defined]
    return [TaskMessage.model_validate_json(data) for t, data, _ in published if t == TOPIC_TASKS]


def test_a_request_makes_a_run_and_publishes_its_builds(client: Any, rt: Runtime) -> None:
    request = DeployRequest(
        architecture=ARCHITECTURE,
        source_root="/src",
        dataflows=["orders"],
        director_url="https://director.example.run.app",
        requested_by="ops",
    )

    response = publish(client, request)

    assert response.status_code == 200
    run = rt.store.get_run(run_id_for("1001"))  # the message id is the idempotency key
    assert run is not None and run.status is RunStatus.RUNNING and run.requested_by == "ops"
    assert run.dataflows == ["orders"] and run.director_url == "https://director.example.run.app"
    assert sorted(t.service for t in tasks(rt)) == ["enrich", "ingest"]


def test_a_redelivered_message_makes_no_second_run(client: Any, rt: Runtime) -> None:
    request = DeployRequest(architecture=ARCHITECTURE, source_root="/src")

    statuses = [publish(client, request, message_id="1001").status_code for _ in range(3)]

    assert statuses == [200, 200, 200]
    assert [r.run_id for r in rt.store.list_runs()] == [run_id_for("1001")]
    assert len(rt.store.get_tasks(run_id_for("1001"))) == 4  # two builds, two deploys


def test_one_idempotency_key_makes_one_run_whatever_the_message_ids(
    client: Any, rt: Runtime
) -> None:
    request = DeployRequest(architecture=ARCHITECTURE, source_root="/src", idempotency_key="k-1")

    for message_id in ("2001", "2002", "2003"):
        assert publish(client, request, message_id=message_id).status_code == 200

    assert [r.run_id for r in rt.store.list_runs()] == [run_id_for("k-1")]


@pytest.mark.parametrize(
    ("architecture", "field", "fix"),
    [
        ("project_id: acme-dev\ndataflows: [orders]\n", "dataflows", "mapping"),
        (
            ARCHITECTURE.replace("ingest-sa", "ingest-sa\n        dependencies: [enrch]"),
            "dependencies",
            "did you mean `enrich`?",
        ),
        (ARCHITECTURE.replace("services/enrich", "../../etc"), "source_path", "inside"),
        ("project_id: Acme Corp\n", "project_id", "6 to 30 lowercase letters"),
    ],
    ids=["wrong-type", "unknown-dependency", "path-escape", "bad-project-id"],
)
def test_an_invalid_request_is_recorded_as_a_failed_run_naming_field_and_fix(
    client: Any, rt: Runtime, architecture: str, field: str, fix: str
) -> None:
    response = publish(client, DeployRequest(architecture=architecture))

    assert response.status_code == 200  # acknowledged: a retry cannot fix it
    run = rt.store.get_run(run_id_for("1001"))
    assert run is not None and run.status is RunStatus.FAILED
    assert field in (run.error or "") and fix in (run.error or "")
    assert tasks(rt) == []


def test_a_plain_secret_fails_the_run_without_being_echoed(
    client: Any, rt: Runtime, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    value = "s3cr3t-plain-db-password"
    architecture = ARCHITECTURE.replace(
        "deployment: {source_path: services/ingest}",
        f"deployment:\n          source_path: services/ingest"
        f"\n          environment_vars: {{DB_PASSWORD: {value}}}",
    )

    publish(client, DeployRequest(architecture=architecture))

    run = rt.store.get_run(run_id_for("1001"))
    assert run is not None and run.status is RunStatus.FAILED
    assert "DB_PASSWORD" in (run.error or "") and "Secret Manager" in (run.error or "")
    result = rt.store.get_result(run_id_for("1001"))
    out = capsys.readouterr()
    kept = run.model_dump_json() + (result.model_dump_json() if result else "")
    kept += rt.store.get_architecture(run_id_for("1001")) or ""
    assert value not in kept + caplog.text + out.out + out.err


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"not json", "(message): Invalid JSON"),
        (b'{"dataflows": "orders"}', "dataflows: Input should be a valid array"),
        (b'{"architecture": 42}', "architecture: Input should be a valid string"),
        (b"[]", "(message): Input should be an object"),
    ],
    ids=["not-json", "wrong-type-list", "wrong-type-text", "not-an-object"],
)
def test_an_undecodable_message_is_acknowledged_and_recorded_as_a_failed_run(
    client: Any, rt: Runtime, data: bytes, field: str
) -> None:
    responses = [publish(client, data), publish(client, data)]  # and redelivered

    assert [r.status_code for r in responses] == [200, 200]  # acknowledged: never retried
    (run,) = rt.store.list_runs()
    assert run.run_id == run_id_for("1001") and run.status is RunStatus.FAILED
    assert "not a valid DeployRequest" in (run.error or "") and field in (run.error or "")
    assert tasks(rt) == []


def test_a_request_for_a_github_commit_reads_it_with_the_token(
    client: Any, rt: Runtime, fake_github: FakeGitHub
) -> None:
    fake_github.commit("acme/shop", SHA, {"deploy/services.yaml": ARCHITECTURE})
    uri = f"github://acme/shop/deploy/services.yaml@{SHA}"
    response = publish(client, DeployRequest(architecture_uri=uri))

    assert response.status_code == 200
    assert {t.spec.source_path for t in tasks(rt)} == {
        f"github://acme/shop@{SHA}/deploy/services/ingest",
        f"github://acme/shop@{SHA}/deploy/services/enrich",
    }
    (read,) = fake_github.seen("/contents/")
    assert read.headers["authorization"] == f"Bearer {fake_github.token}"


def test_a_transient_github_failure_asks_pub_sub_to_redeliver(
    client: Any, rt: Runtime, fake_github: FakeGitHub
) -> None:
    fake_github.commit("acme/shop", SHA, {"services.yaml": ARCHITECTURE})
    fake_github.fail_next = [503]
    request = DeployRequest(architecture_uri=f"github://acme/shop/services.yaml@{SHA}")

    first = publish(client, request)
    again = publish(client, request)

    assert first.status_code == 500  # Pub/Sub redelivers what was not acknowledged
    assert again.status_code == 200
    run = rt.store.get_run(run_id_for("1001"))
    assert run is not None and run.status is RunStatus.RUNNING


@pytest.fixture
def fake_gcs(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGcs]:
    server = FakeGcs()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.start())
    yield server
    server.stop()


def test_a_request_for_a_cloud_storage_object_reads_it(
    client: Any, rt: Runtime, fake_gcs: FakeGcs
) -> None:
    fake_gcs.put("acme-deploys", "prod/services.yaml", ARCHITECTURE.encode())
    request = DeployRequest(
        architecture_uri="gs://acme-deploys/prod/services.yaml", source_root="/src"
    )

    assert publish(client, request).status_code == 200

    run = rt.store.get_run(run_id_for("1001"))
    assert run is not None and run.status is RunStatus.RUNNING
    assert run.architecture_file == "gs://acme-deploys/prod/services.yaml"
    assert [r.path for r in fake_gcs.requests if r.query.get("alt") == ["media"]] == [
        "/download/storage/v1/b/acme-deploys/o/prod%2Fservices.yaml"
    ]
    assert len(tasks(rt)) == 2


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("gs://acme-deploys/missing.yaml", "check the bucket and object name"),
        ("gs://acme-deploys/huge.yaml", "over the 1 MiB architecture limit"),
        ("gs://Not_A_Bucket", "gs://BUCKET/OBJECT"),
        ("s3://acme/services.yaml", "gs://BUCKET/OBJECT or github://OWNER/REPO/PATH@REF"),
        ("github://acme@main", "github://OWNER/REPO/PATH@REF"),
    ],
    ids=["missing-object", "too-big", "bad-gs-uri", "unknown-scheme", "bad-github-uri"],
)
def test_an_unreadable_location_fails_the_run_with_the_fix(
    client: Any, rt: Runtime, fake_gcs: FakeGcs, uri: str, expected: str
) -> None:
    fake_gcs.put("acme-deploys", "huge.yaml", b"# padding\n" * 110_000)

    assert publish(client, DeployRequest(architecture_uri=uri)).status_code == 200

    run = rt.store.get_run(run_id_for("1001"))
    assert run is not None and run.status is RunStatus.FAILED
    assert expected in (run.error or "")
    assert not [r for r in fake_gcs.requests if r.query.get("alt") == ["media"]]  # never read


def test_an_event_that_is_not_a_pub_sub_message_is_dropped(client: Any, rt: Runtime) -> None:
    body = {"message": {"data": "%%% not base64", "messageId": "1"}, "subscription": "s"}

    response = client.post(PUSH_PATH, json=body)

    assert response.status_code == 200 and rt.store.list_runs() == []


def test_the_architecture_is_parsed_as_json_too(client: Any, rt: Runtime) -> None:
    document = {"project_id": "acme-dev", "dataflows": {"orders": {"services": {}}}}

    publish(client, DeployRequest(architecture=json.dumps(document)))

    run = rt.store.get_run(run_id_for("1001"))
    assert run is not None and run.error is None
