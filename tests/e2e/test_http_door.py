"""The dispatcher's HTTP door under functions-framework: what the console, `curl` and the
CLI send, and every bad input answered with a 4xx naming the field, line and fix."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import functions_framework
import pytest

from shared import bootstrap
from shared.core.runtime import Runtime
from shared.messages import TOPIC_TASKS, RunStatus
from tests.e2e.dispatcher_runtime import fresh_dispatcher_runtime

MAIN = Path(__file__).resolve().parents[2] / "functions" / "dispatcher" / "main.py"
TOKEN = "http-token-7c1e-never-echoed"
ARCHITECTURE = """\
project_id: acme-dev
region: europe-west1
dataflows:
  orders:
    services:
      ingest:
        service_account: ingest-sa
        deployment:
          source_path: services/ingest
  notifications:
    services:
      notify:
        service_account: notify-sa
        deployment: {source_path: services/notify}
"""
INGEST = "dataflows.orders.services.ingest"


@pytest.fixture
def rt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("ARCHDEPLOY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("ARCHDEPLOY_HTTP_SOURCE_ROOT", "/src")
    yield from fresh_dispatcher_runtime()


@pytest.fixture
def client(rt: Runtime) -> Any:
    return functions_framework.create_app(target="dispatch_http", source=str(MAIN)).test_client()


def post_yaml(client: Any, text: str | bytes, path: str = "/", **headers: str) -> Any:
    if "source_root=" not in path:
        path += ("&" if "?" in path else "?") + "source_root=/src"
    return client.post(path, data=text, content_type="application/yaml", headers=headers)


def published_tasks(rt: Runtime) -> list[bytes]:
    return [data for topic, data, _ in rt.bus.published if topic == TOPIC_TASKS]  # type: ignore[attr-defined]


def assert_refused_cleanly(response: Any, status: int) -> dict[str, Any]:
    """A JSON answer with the error and its problems, and no stack trace."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.get_json()
    assert body["error"] and isinstance(body["problems"], list)
    assert "Traceback" not in response.get_data(as_text=True)
    return body


def test_a_json_request_is_accepted_and_its_run_read_back(client: Any, rt: Runtime) -> None:
    response = client.post("/", json={"architecture": ARCHITECTURE, "source_root": "/src"})

    assert response.status_code == 202
    run_id = response.get_json()["run_id"]
    assert response.headers["Location"] == f"/runs/{run_id}"
    view = client.get(f"/runs/{run_id}")
    assert view.status_code == 200 and view.get_json()["run_id"] == run_id
    assert view.get_json()["status"] == RunStatus.RUNNING.value
    assert client.get(f"/?run_id={run_id}").get_json()["run_id"] == run_id
    assert [r["run_id"] for r in client.get("/").get_json()["runs"]] == [run_id]
    assert rt.store.get_run(run_id).requested_by == "http"  # type: ignore[union-attr]
    assert len(published_tasks(rt)) == 2


def test_raw_yaml_is_accepted_with_its_query_parameters(client: Any, rt: Runtime) -> None:
    path = "/?dataflow=orders&idempotency_key=deploy-42&source_root=/src"

    first = post_yaml(client, ARCHITECTURE, path)
    again = post_yaml(client, ARCHITECTURE, path)

    assert first.status_code == again.status_code == 202
    assert first.get_json()["run_id"] == again.get_json()["run_id"]
    (run,) = rt.store.list_runs()
    assert run.dataflows == ["orders"] and run.idempotency_key == "deploy-42"


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Bearer {TOKEN[:-1]}", TOKEN, f"Basic {TOKEN}", "Bearer \u00e9"],
    ids=["missing", "wrong", "prefix", "no-scheme", "basic", "non-ascii"],
)
def test_without_the_bearer_token_nothing_is_answered(
    client: Any, rt: Runtime, monkeypatch: pytest.MonkeyPatch, authorization: str | None
) -> None:
    monkeypatch.setenv("ARCHDEPLOY_HTTP_TOKEN", TOKEN)
    bootstrap.function_settings.cache_clear()
    headers = {"Authorization": authorization} if authorization else {}

    posted = client.post(
        "/", json={"architecture": ARCHITECTURE, "source_root": "/src"}, headers=headers
    )
    read = client.get("/", headers=headers)

    for response in (posted, read):
        assert_refused_cleanly(response, 401)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert TOKEN not in response.get_data(as_text=True)
    assert rt.store.list_runs() == []


def test_with_the_bearer_token_requests_are_accepted(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARCHDEPLOY_HTTP_TOKEN", TOKEN)
    bootstrap.function_settings.cache_clear()
    auth = {"Authorization": f"Bearer {TOKEN}"}

    response = client.post(
        "/", json={"architecture": ARCHITECTURE, "source_root": "/src"}, headers=auth
    )

    assert response.status_code == 202
    assert client.get(response.headers["Location"], headers=auth).status_code == 200


def test_an_oversized_body_is_refused_before_it_is_parsed(client: Any, rt: Runtime) -> None:
    response = post_yaml(client, "x" * 1_200_001)

    body = assert_refused_cleanly(response, 413)
    assert "1200000 bytes" in body["error"] and rt.store.list_runs() == []


@pytest.mark.parametrize(
    "content_type",
    [
        "application/xml",
        "multipart/form-data",
        "",
        "text/plain",
        "application/x-www-form-urlencoded",
    ],
)
def test_an_unsupported_content_type_is_refused(client: Any, content_type: str) -> None:
    response = client.post("/", data=b"<run/>", content_type=content_type)

    body = assert_refused_cleanly(response, 415)
    assert body["problems"][0]["path"] == "Content-Type"
    assert "application/json" in body["problems"][0]["fix"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_are_refused(client: Any, method: str) -> None:
    response = client.open("/", method=method, json={})

    assert_refused_cleanly(response, 405)
    assert response.headers["Allow"] == "GET, POST"


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        (b'{"architecture": "x",', "", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "", ""),
        (b'["a list"]', "", "not an object"),
        (b"[" * 100_000 + b"]" * 100_000, "", "nested too deeply"),
        (json.dumps({"architecture": ARCHITECTURE, "dataflow": ["orders"]}), "dataflow", ""),
        (json.dumps({"architecture": ARCHITECTURE, "dataflows": "orders"}), "dataflows", "list"),
        (json.dumps({"architecture": ["project_id: x"]}), "architecture", "string"),
        (json.dumps({"dataflows": []}), "", "exactly one of"),
        (json.dumps({"architecture": "a", "architecture_uri": "gs://b/o"}), "", "exactly one"),
        (json.dumps({"architecture": ARCHITECTURE, "version": 99}), "", "newer"),
        (json.dumps({"architecture_uri": "/etc/passwd"}), "architecture_uri", "own disk"),
        (json.dumps({"architecture": ARCHITECTURE, "build_only": "maybe"}), "build_only", "bool"),
    ],
    ids=[
        "malformed-json",
        "not-utf8",
        "not-an-object",
        "nesting-bomb",
        "unknown-field",
        "wrong-type-list",
        "wrong-type-text",
        "no-architecture",
        "two-architectures",
        "newer-version",
        "local-path",
        "wrong-type-bool",
    ],
)
def test_a_bad_request_body_is_refused_naming_the_field(
    client: Any, rt: Runtime, body: str | bytes, path: str, message: str
) -> None:
    response = client.post("/", data=body, content_type="application/json")

    refused = assert_refused_cleanly(response, 400)
    assert any(p["path"] == path and message in p["message"] for p in refused["problems"])
    assert rt.store.list_runs() == [] and published_tasks(rt) == []


def test_an_unknown_field_gets_a_did_you_mean(client: Any) -> None:
    response = client.post(
        "/", json={"architecture": ARCHITECTURE, "dataflow": ["orders"], "source_root": "/src"}
    )

    (problem,) = assert_refused_cleanly(response, 400)["problems"]
    assert problem["fix"] == "did you mean `dataflows`?"


def test_an_unknown_query_parameter_gets_a_did_you_mean(client: Any) -> None:
    response = post_yaml(client, ARCHITECTURE, "/?dataflows=orders")

    (problem,) = assert_refused_cleanly(response, 400)["problems"]
    assert problem["path"] == "dataflows" and problem["fix"] == "did you mean `dataflow`?"


def test_an_unknown_dataflow_is_refused(client: Any, rt: Runtime) -> None:
    body = assert_refused_cleanly(post_yaml(client, ARCHITECTURE, "/?dataflow=billing"), 400)

    assert "billing" in body["error"] and rt.store.list_runs() == []


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True)
)
SECRET_VALUE = "hunter2-in-plain-text"


def _with(deployment_lines: str) -> str:
    return ARCHITECTURE.replace(
        "          source_path: services/ingest\n",
        "          source_path: services/ingest\n" + deployment_lines,
    )


BAD_ARCHITECTURES = [
    ("yaml-bomb", BOMB, "", 6, "alias bomb"),
    ("malformed-yaml", ARCHITECTURE + "  oops: [unclosed\n", "", 16, "invalid YAML"),
    ("tab-indent", "project_id: acme-dev\n\tregion: x\n", "", 2, ""),
    ("not-a-mapping", "- just\n- a list\n", "", 1, "mapping"),
    ("deep-nesting", "a: " + "[" * 500 + "]" * 500 + "\n", "", 1, "deep"),
    ("over-1-MiB", "# pad\n" * 180_000, "", None, "1 MiB"),
    ("not-utf8", b"project_id: acme-dev\nregion: \xff\n", "", 2, "UTF-8"),
    (
        "wrong-type",
        ARCHITECTURE.replace("services/ingest", "[a, b]"),
        f"{INGEST}.deployment.source_path",
        9,
        "must be text",
    ),
    (
        "unknown-enum",
        ARCHITECTURE.replace("  orders:\n", "  orders:\n    lifecycle: {strategy: forever}\n"),
        "dataflows.orders.lifecycle.strategy",
        5,
        "must be one of",
    ),
    (
        "source-path-escape",
        ARCHITECTURE.replace("services/ingest", "../../etc"),
        f"{INGEST}.deployment.source_path",
        9,
        "leads out",
    ),
    (
        "source-path-absolute",
        ARCHITECTURE.replace("services/ingest", "/etc"),
        f"{INGEST}.deployment.source_path",
        9,
        "resolves to /etc, outside /src",
    ),
    (
        "template-escape",
        _with("          config_templates: {../secrets.env: app.env}\n"),
        f'{INGEST}.deployment.config_templates["../secrets.env"]',
        10,
        "leads out",
    ),
    (
        "template-target-escape",
        _with("          config_templates: {common/app.env: ../../app.env}\n"),
        f"{INGEST}.deployment.config_templates",
        10,
        "inside the build directory",
    ),
    (
        "cloud-run-name",
        ARCHITECTURE.replace("      ingest:\n", "      Ingest_Service:\n"),
        "dataflows.orders.services.Ingest_Service",
        6,
        "not a valid Cloud Run service name",
    ),
    (
        "env-name-invalid",
        _with("          environment_vars: {1BAD-NAME: x}\n"),
        f"{INGEST}.deployment.environment_vars",
        10,
        "not a valid environment variable name",
    ),
    (
        "env-name-reserved",
        _with("          environment_vars: {PORT: '8080'}\n"),
        f"{INGEST}.deployment.environment_vars.PORT",
        10,
        "reserved by Cloud Run",
    ),
    (
        "secret-in-plain",
        _with(f"          environment_vars: {{DB_PASSWORD: {SECRET_VALUE}}}\n"),
        f"{INGEST}.deployment.environment_vars.DB_PASSWORD",
        10,
        "looks like a secret",
    ),
    (
        "secret-ref-invalid",
        _with("          secret_environment_vars: [{name: API_KEY, value_from: 'a b c'}]\n"),
        f"{INGEST}.deployment.secret_environment_vars[0].value_from",
        10,
        "not a Secret Manager secret id",
    ),
    (
        "bad-project-id",
        ARCHITECTURE.replace("acme-dev", "Acme Dev!"),
        "project_id",
        1,
        "project id",
    ),
    (
        "dependency-cycle",
        ARCHITECTURE.replace("ingest-sa\n", "ingest-sa\n        dependencies: [ingest]\n"),
        f"{INGEST}.dependencies",
        8,
        "cycle",
    ),
]


@pytest.mark.parametrize(
    ("text", "path", "line", "message"),
    [case[1:] for case in BAD_ARCHITECTURES],
    ids=[case[0] for case in BAD_ARCHITECTURES],
)
def test_a_bad_architecture_is_refused_naming_path_line_and_fix(
    client: Any,
    rt: Runtime,
    text: str | bytes,
    path: str,
    line: int | None,
    message: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    response = post_yaml(client, text)

    body = assert_refused_cleanly(response, 400)
    assert body["error"] == "invalid architecture"
    matching = [
        p for p in body["problems"] if p["path"].startswith(path) and message in p["message"]
    ]
    assert matching, body["problems"]
    assert matching[0]["line"] == line and (matching[0]["fix"] or not path)
    assert rt.store.list_runs() == [] and published_tasks(rt) == []  # nothing built
    assert SECRET_VALUE not in response.get_data(as_text=True) + caplog.text


def test_the_same_bad_architecture_inside_json_is_refused_alike(client: Any) -> None:
    text = ARCHITECTURE.replace("services/ingest", "../../etc")

    body = assert_refused_cleanly(
        client.post("/", json={"architecture": text, "source_root": "/src"}), 400
    )

    assert body["problems"][0]["path"] == f"{INGEST}.deployment.source_path"
    assert body["problems"][0]["line"] == 9


@pytest.mark.parametrize(
    ("path", "status"),
    [("/runs/r-0000000000000000", 404), ("/?run_id=../../etc", 400), ("/runs/a%2Fb", 400)],
    ids=["unknown", "path-like", "slash"],
)
def test_reading_a_run_that_is_not_there_is_refused(client: Any, path: str, status: int) -> None:
    body = assert_refused_cleanly(client.get(path), status)

    assert body["problems"][0]["path"] == "run_id" and body["problems"][0]["fix"]


def test_an_unexpected_failure_answers_500_without_details(
    client: Any, rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    rt.store.close()  # type: ignore[attr-defined]  # the store fails under the request

    response = client.post("/", json={"architecture": ARCHITECTURE, "source_root": "/src"})

    body = assert_refused_cleanly(response, 500)
    assert "logs" in body["error"]
    assert "Traceback" in caplog.text  # the details are logged, not answered


def test_post_cancel_ends_a_running_run_cancelled_and_an_unknown_run_is_404(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.bootstrap import make_store
    from shared.messages import DeployRequest
    from shared.settings import Settings
    from tests.builders import architecture

    monkeypatch.setenv("ARCHDEPLOY_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("ARCHDEPLOY_HTTP_SOURCE_ROOT", str(tmp_path))
    bootstrap.function_settings.cache_clear()
    bootstrap.for_function.cache_clear()
    client = _cancel_client()
    request = DeployRequest(
        architecture=architecture().model_dump_json(),
        idempotency_key="c1",
        source_root=str(tmp_path),
    )
    accepted = client.post("/", json=request.model_dump(mode="json"))
    run_id = accepted.get_json()["run_id"]

    answer = client.post(f"/runs/{run_id}/cancel", headers={"X-Requested-By": "alice"})

    assert answer.status_code == 202
    assert answer.get_json()["cancelled_by"] == "alice"
    store = make_store(Settings(state_dir=tmp_path))
    result = store.get_result(run_id)
    assert result is not None and result.status.value == "cancelled"
    assert client.post("/runs/r-0000000000000000/cancel").status_code == 404
    bootstrap.function_settings.cache_clear()
    bootstrap.for_function.cache_clear()


def _cancel_client() -> Any:
    source = Path(__file__).resolve().parents[2] / "functions" / "dispatcher" / "main.py"
    app = functions_framework.create_app(target="dispatch_http", source=str(source))
    return app.test_client()
