"""The worker and aggregator functions under functions-framework, fed Pub/Sub push bodies
(the shape the emulator and Eventarc deliver, from tests/data/) through its test client."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import functions_framework
import pytest

from shared import bootstrap
from shared.adapters.local.deployer import LocalDeployer
from shared.adapters.local.sqlite_store import SqliteRunStore
from shared.core.dispatcher import dispatch_request
from shared.core.runtime import Runtime
from shared.messages import DeployRequest, Phase, TaskCompletion, TaskStatus

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PUSH_PATH = "/projects/archdeploy-test/topics/archdeploy-tasks"


class _NullBus:
    def publish(self, topic: str, message: Any, *, attributes: Any = None) -> None: ...
    def publish_many(self, topic: str, messages: Any) -> None: ...


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("ARCHDEPLOY_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("ARCHDEPLOY_HEALTH_TIMEOUT_SECONDS", "20")
    bootstrap.function_settings.cache_clear()
    bootstrap.for_function.cache_clear()
    yield tmp_path
    bootstrap.function_settings.cache_clear()
    bootstrap.for_function.cache_clear()
    LocalDeployer(tmp_path).teardown_all()


def _client(name: str, target: str) -> Any:
    source = ROOT / "functions" / name / "main.py"
    app = functions_framework.create_app(
        target=target, source=str(source), signature_type="cloudevent"
    )
    return app.test_client()


def _push(data: bytes, attributes: dict[str, str], message_id: str = "9001") -> dict[str, Any]:
    body = json.loads((ROOT / "tests/data/pubsub_push_task.json").read_text())
    body["message"].update(
        data=base64.b64encode(data).decode(), attributes=attributes, messageId=message_id
    )
    return body


def _start_run(state_dir: Path) -> str:
    store = SqliteRunStore(state_dir / "runs.db")
    rt = Runtime(store=store, bus=_NullBus())
    request = DeployRequest(
        architecture=(EXAMPLES / "architecture.yaml").read_text(), source_root=str(EXAMPLES)
    )
    run = dispatch_request(request, rt)
    store.close()
    return run.run_id


def _task_message(state_dir: Path, run_id: str, service: str) -> bytes:
    from shared.core.publishing import task_message

    store = SqliteRunStore(state_dir / "runs.db")
    run = store.get_run(run_id)
    task = store.get_task(f"{run_id}:build:{service}")
    store.close()
    assert run and task
    return task_message(run, task).model_dump_json().encode()


def test_the_worker_function_builds_the_task_it_is_pushed_and_only_once(state_dir: Path) -> None:
    run_id = _start_run(state_dir)
    data = _task_message(state_dir, run_id, "director")
    attrs = {"run_id": run_id, "task_id": f"{run_id}:build:director", "phase": "build"}
    worker = _client("worker", "run_task")

    first = worker.post(PUSH_PATH, json=_push(data, attrs))
    again = worker.post(PUSH_PATH, json=_push(data, attrs, message_id="9002"))

    assert first.status_code == 200 and again.status_code == 200
    store = SqliteRunStore(state_dir / "runs.db")
    task = store.get_task(f"{run_id}:build:director")
    store.close()
    # The worker stores its outcome before publishing it: one attempt, succeeded.
    assert task is not None and task.status is TaskStatus.SUCCEEDED and task.attempt == 1
    images = json.loads((state_dir / "images" / "index.json").read_text())["manifests"]
    assert len(images) == 1  # the redelivery built nothing


def test_the_aggregator_function_applies_a_completion_once(state_dir: Path) -> None:
    run_id = _start_run(state_dir)
    completion = TaskCompletion(
        run_id=run_id,
        task_id=f"{run_id}:build:notify",
        phase=Phase.BUILD,
        service="notify",
        status=TaskStatus.FAILED,
        error="building notify: exit 1",
    )
    aggregator = _client("aggregator", "aggregate")
    body = _push(completion.model_dump_json().encode(), {"run_id": run_id})
    assert aggregator.post(PUSH_PATH, json=body).status_code == 200
    assert aggregator.post(PUSH_PATH, json=body).status_code == 200

    store = SqliteRunStore(state_dir / "runs.db")
    task = store.get_task(f"{run_id}:build:notify")
    run = store.get_run(run_id)
    store.close()
    assert task is not None and task.status is TaskStatus.FAILED
    assert run is not None and run.halted == "build of notify failed"


def test_a_poison_push_is_acknowledged_and_logged_with_its_id(
    state_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    aggregator = _client("aggregator", "aggregate")
    response = aggregator.post(PUSH_PATH, json=_push(b"{not json", {}, message_id="777"))
    assert response.status_code == 200  # acknowledged: redelivery cannot fix it
    logged = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line[:1] == "{"]
    errors = [e["message"] for e in logged if e["severity"] == "ERROR"]
    assert any("message 777 is not a valid TaskCompletion" in m for m in errors), errors


def test_function_logs_are_json_lines_with_the_run_and_task_ids(
    state_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run_id = _start_run(state_dir)
    data = _task_message(state_dir, run_id, "notify")
    attrs = {"run_id": run_id, "task_id": f"{run_id}:build:notify", "phase": "build"}
    _client("worker", "run_task").post(PUSH_PATH, json=_push(data, attrs))
    lines = [
        json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")
    ]
    assert lines, "the worker logged nothing"
    labelled = [entry for entry in lines if entry.get("logging.googleapis.com/labels")]
    assert labelled
    for entry in labelled:
        assert entry["severity"] in {"DEBUG", "INFO", "WARNING", "ERROR"}
        assert entry["logging.googleapis.com/labels"]["run_id"] == run_id
        assert entry["logging.googleapis.com/labels"]["task_id"] == attrs["task_id"]
