"""The serverless topology end to end: emulator push subscriptions feed the three functions
under functions-framework, as Eventarc would, and the local deployer builds and runs real
services. Fixtures (and the printed run timelines) are in conftest.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner

from shared.adapters.gcp.pubsub_bus import PubSubBus
from shared.adapters.local.deployer import LocalDeployer
from shared.cli.main import cli
from shared.core.dispatcher import run_id_for
from shared.devserver.topology import DevTopology
from shared.messages import DeployRequest, Phase, RunResult, RunStatus, TaskStatus, task_id_for

if TYPE_CHECKING:
    from tests.e2e.conftest import ExampleRun

CHECK = Path(__file__).resolve().parents[2] / "examples" / "check.py"
RUN_TIMEOUT = 90.0  # seconds
EXAMPLE_SERVICES = {"director", "ingest", "enrich", "notify"}
PINNED = re.compile(r"@sha256:[0-9a-f]{64}$")
MISSING_PACKAGE = "this-package-does-not-exist-archdeploy"
LABELS = "logging.googleapis.com/labels"

HEALTHY_MAIN = """\
import http.server, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def _architecture(tmp_path: Path, name: str, services: dict[str, str | None]) -> Path:
    """One dataflow; each service has a healthy main.py and, if given, a requirements.txt."""
    lines = [f"name: {name}", "project_id: archdeploy-e2e", "region: europe-west1", "dataflows:"]
    lines += [f"  {name}:", "    services:"]
    for service, requirements in services.items():
        source = tmp_path / service
        source.mkdir()
        (source / "main.py").write_text(HEALTHY_MAIN)
        if requirements is not None:
            (source / "requirements.txt").write_text(requirements + "\n")
        lines += [f"      {service}:", f"        name: {service}"]
        lines += [f"        service_account: {service}-sa"]
        lines += [f"        deployment: {{source_path: {service}}}"]
    path = tmp_path / "architecture.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _log_entries(topo: DevTopology, function: str) -> list[dict[str, Any]]:
    """Every line of a function's log, each of which must be one JSON object."""
    entries = []
    for number, line in enumerate(topo.log_path(function).read_text().splitlines(), 1):
        entry = json.loads(line)  # fails the test on a line that is not JSON
        assert {"severity", "message", LABELS} <= set(entry), f"{function}.log:{number}: {line}"
        entries.append(entry)
    return entries


def _wait_store(topo: DevTopology, run_id: str) -> RunResult:
    """Poll the run store until the run's final result is written."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while (result := topo.store().get_result(run_id)) is None:
        assert time.monotonic() < deadline, f"run {run_id} has no result after {RUN_TIMEOUT:g}s"
        time.sleep(0.2)
    return result


def _labelled(entries: list[dict[str, Any]], **labels: str) -> list[dict[str, Any]]:
    return [e for e in entries if all(e[LABELS].get(k) == v for k, v in labels.items())]


def _logged(topo: DevTopology, function: str, run_id: str, start: str) -> list[dict[str, Any]]:
    """The run's log entries of `function`, once one starting with `start` is written
    (or RUN_TIMEOUT has passed)."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        entries = _labelled(_log_entries(topo, function), run_id=run_id)
        if any(e["message"].startswith(start) for e in entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def test_the_example_deploys_through_the_topology(
    example_run: ExampleRun, topology: DevTopology, tmp_path: Path
) -> None:
    result = example_run.result
    assert result.status is RunStatus.SUCCEEDED, result.errors
    assert set(result.images) == EXAMPLE_SERVICES
    assert all(PINNED.search(image) for image in result.images.values()), result.images
    assert set(result.urls) == EXAMPLE_SERVICES
    assert result.director_url == result.urls["director"]
    # The final record is the one the aggregator wrote to the store.
    assert topology.store().get_result(example_run.run_id) == result
    assert set(LocalDeployer(topology.state_dir).running()) >= EXAMPLE_SERVICES
    # Every service answers its health check and is registered with the director.
    path = tmp_path / "result.json"
    path.write_text(result.model_dump_json())
    check = [sys.executable, str(CHECK), str(path)]
    done = subprocess.run(check, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_one_run_can_be_followed_across_the_three_functions_in_their_json_logs(
    example_run: ExampleRun, topology: DevTopology
) -> None:
    run_id = example_run.run_id
    logs = {name: _log_entries(topology, name) for name in topology.urls}  # all JSON lines
    tasks = {t.task_id for t in topology.store().get_tasks(run_id)}
    assert len(tasks) == 8  # 4 builds, the director, 3 deploys
    assert _labelled(logs["dispatcher-http"], run_id=run_id), "the dispatcher logged nothing"
    for function in ("worker", "aggregator"):
        entries = _labelled(logs[function], run_id=run_id)
        assert {e[LABELS].get("task_id") for e in entries} == tasks, function
    for entries in logs.values():
        for entry in entries:
            task_id = entry[LABELS].get("task_id")
            assert task_id is None or task_id.startswith(f"{entry[LABELS]['run_id']}:"), entry


def test_a_failed_build_fails_the_run_by_the_event_path_and_deploys_nothing(
    topology: DevTopology,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_timeline: Callable[[str, str], None],
) -> None:
    # Given an architecture whose one service needs a package pip cannot get (offline)
    services = {"shop-good": None, "shop-broken": f"{MISSING_PACKAGE}==0"}
    architecture = _architecture(tmp_path, "shop", services)
    # When it arrives on the requests topic, as a Pub/Sub trigger would send it
    key = f"e2e-{uuid.uuid4().hex}"
    request = DeployRequest(
        architecture=architecture.read_text(),
        source_root=str(tmp_path),
        idempotency_key=key,
        requested_by="e2e",
    )
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", topology.pubsub_host)
    with PubSubBus(topology.project, topology.topics) as bus:
        bus.publish("requests", request)
    run_id = run_id_for(key)
    result = _wait_store(topology, run_id)
    record_timeline(run_id, "a build fails")
    # Then the run failed with that build's error, keeping the image that did build
    _assert_failed_on_build(result, "shop-broken")
    assert set(result.images) == {"shop-good"}
    # And nothing was deployed
    assert result.urls == {}
    deploys = topology.store().get_tasks(run_id, Phase.DEPLOY)
    assert deploys and all(t.started_at is None for t in deploys)
    assert not set(services) & set(LocalDeployer(topology.state_dir).running())
    assert not any(list((topology.state_dir / "run").glob(f"*/*/{name}*")) for name in services)
    # And the failure went worker -> completions topic -> aggregator, like any outcome
    task_id = task_id_for(run_id, Phase.BUILD, "shop-broken")
    assert _labelled(_log_entries(topology, "dispatcher"), run_id=run_id)
    worker = _labelled(_log_entries(topology, "worker"), task_id=task_id)
    aggregator = _labelled(_log_entries(topology, "aggregator"), task_id=task_id)
    assert any(e["message"].startswith("build failed:") for e in worker), worker
    assert aggregator, "the aggregator was not pushed the failed build's completion"
    # The aggregator logs the end after the store holds the result the test waited for.
    closed = _logged(topology, "aggregator", run_id, "run finished: failed")
    assert any(e["message"].startswith("run finished: failed") for e in closed), closed


def _assert_failed_on_build(result: RunResult, service: str) -> None:
    assert result.status is RunStatus.FAILED
    assert [(e.service, e.phase) for e in result.errors] == [(service, Phase.BUILD)]
    assert MISSING_PACKAGE in result.errors[0].error
    assert result.services[service].build_status is TaskStatus.FAILED


def test_archdeploy_up_with_an_endpoint_submits_over_http_and_follows_the_run(
    topology: DevTopology,
    tmp_path: Path,
    record_timeline: Callable[[str, str], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ARCHDEPLOY_HTTP_TOKEN", topology.http_token)
    architecture = _architecture(tmp_path, "hello", {"hello-cli": None})
    args = ["up", str(architecture), "--endpoint", topology.http_url, "--json"]
    done = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert done.exit_code == 0, done.stderr
    result = RunResult.model_validate_json(done.stdout)
    record_timeline(result.run_id, "archdeploy up --endpoint")
    assert result.status is RunStatus.SUCCEEDED
    assert set(result.urls) == {"hello-cli"}
    assert f"run {result.run_id} submitted to {topology.http_url}" in done.stderr
    assert "hello-cli" in done.stderr and "deployed" in done.stderr


@pytest.mark.parametrize(
    ("function", "topic"),
    [("dispatcher", "requests"), ("worker", "tasks"), ("aggregator", "completions")],
    ids=["dispatcher", "worker", "aggregator"],
)
def test_each_function_is_fed_by_a_push_subscription_with_retries_and_a_dead_letter_topic(
    topology: DevTopology, monkeypatch: pytest.MonkeyPatch, function: str, topic: str
) -> None:
    from google.cloud.pubsub_v1 import SubscriberClient

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", topology.pubsub_host)
    project, name, topic_id = topology.project, f"archdeploy-{function}", topology.topics[topic]
    with SubscriberClient() as subscriber:
        sub = subscriber.get_subscription(subscription=f"projects/{project}/subscriptions/{name}")
        kept = subscriber.get_subscription(
            subscription=f"projects/{project}/subscriptions/{name}-dead-letter"
        )
    assert sub.topic == f"projects/{project}/topics/{topic_id}"
    endpoint = f"{topology.urls[function]}/projects/{project}/topics/{topic_id}"
    assert sub.push_config.push_endpoint == endpoint
    assert sub.dead_letter_policy.dead_letter_topic == kept.topic
    assert kept.topic == f"projects/{project}/topics/{name}-dead-letter"
    assert sub.dead_letter_policy.max_delivery_attempts == 5
    assert sub.retry_policy.minimum_backoff.total_seconds() == 1


def test_archdeploy_dev_serves_until_ctrl_c_and_then_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    # Given `archdeploy dev`, up and listening
    out, errors = tmp_path / "dev.out", tmp_path / "dev.err"
    command = [sys.executable, "-m", "shared.cli.main", "--state-dir", str(tmp_path), "dev"]
    with out.open("w") as stdout, errors.open("w") as stderr:
        dev = subprocess.Popen(command, stdout=stdout, stderr=stderr, start_new_session=True)
    try:
        ports = _listening_ports(dev, out, errors)
        assert len(ports) == 8  # 6 functions (the webhook among them), 2 emulators
        # When it gets Ctrl-C
        dev.send_signal(signal.SIGINT)
        code = dev.wait(timeout=60)
    finally:
        if dev.poll() is None:  # the test failed: do not leave it behind
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
    # Then it stopped everything it started, says so, and exits as interrupted (130)
    assert code == 130, errors.read_text()
    assert "stopped: nothing left running" in errors.read_text()
    assert not [port for port in ports if _answers(port)]
    assert not _processes_using(ports)


def _listening_ports(dev: subprocess.Popen[bytes], out: Path, errors: Path) -> list[int]:
    deadline = time.monotonic() + 60
    while "Ctrl-C stops everything." not in out.read_text():
        assert dev.poll() is None, errors.read_text()
        assert time.monotonic() < deadline, out.read_text() + errors.read_text()
        time.sleep(0.2)
    listening = out.read_text().split("logs")[0]  # the lines before the logs directory
    return [int(port) for port in re.findall(r"127\.0\.0\.1:(\d+)", listening)]


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _processes_using(ports: list[int]) -> list[str]:
    """Command lines of processes started to listen on one of `ports` (emulators, functions)."""
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = path.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        joined = " ".join(args)
        if any(re.search(rf"--(host-)?port[= ](127\.0\.0\.1:)?{p}\b", joined) for p in ports):
            found.append(joined)
    return found


def test_the_sweep_function_answers_as_cloud_scheduler_calls_it(topology: DevTopology) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(topology.urls["sweep"], timeout=60) as response:
        assert response.status == 200
        assert isinstance(json.loads(response.read()), dict)


def test_archdeploy_up_on_the_pubsub_bus_publishes_the_request_and_follows_the_store(
    topology: DevTopology,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_timeline: Callable[[str, str], None],
) -> None:
    architecture = _architecture(tmp_path, "hello", {"hello-pubsub": None})
    monkeypatch.setenv("ARCHDEPLOY_BUS", "pubsub")
    monkeypatch.setenv("ARCHDEPLOY_STORE", "firestore")
    monkeypatch.setenv("ARCHDEPLOY_DEPLOYER", "local")
    monkeypatch.setenv("ARCHDEPLOY_PROJECT", topology.project)
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", topology.pubsub_host)
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", topology.firestore_host)
    monkeypatch.setenv("ARCHDEPLOY_FIRESTORE_COLLECTION", topology.settings.firestore_collection)
    for name, topic in topology.topics.items():
        monkeypatch.setenv(f"ARCHDEPLOY_TOPIC_{name.upper()}", topic)
    done = CliRunner().invoke(cli, ["up", str(architecture), "--json"], catch_exceptions=False)
    assert done.exit_code == 0, done.stderr
    result = RunResult.model_validate_json(done.stdout)
    record_timeline(result.run_id, "archdeploy up on the Pub/Sub bus")
    assert result.status is RunStatus.SUCCEEDED
    assert set(result.urls) == {"hello-pubsub"}
    assert f"run {result.run_id} published to" in done.stderr
