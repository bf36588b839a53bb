"""E2E fixtures: the serverless topology on this machine, started once for the session.

The Pub/Sub and Firestore emulators, push subscriptions, and the dispatcher, worker and
aggregator under functions-framework (`shared.devserver.topology`). Each test's run timeline
(when every task was released, started and finished, and when the aggregator closed the
run) is printed in the terminal summary.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from shared.adapters.local.deployer import LocalDeployer
from shared.adapters.local.processes import processes_in
from shared.cli.remote import fetch_run
from shared.devserver.topology import DevTopology
from shared.errors import UsageError
from shared.messages import DeployRequest, RunResult, RunStatus

PROJECT = "archdeploy-e2e"
RUN_TIMEOUT = 90.0  # seconds for one run to finish
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "architecture.yaml"
_TIMELINES = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTopology]:
    # Offline pip: a requirement that is not in the local wheel cache fails at once. DEBUG:
    # the aggregator logs every completion it is pushed, even one the worker applied.
    env = {
        "PIP_NO_INDEX": "1",
        "ARCHDEPLOY_HEALTH_TIMEOUT_SECONDS": "30",
        "ARCHDEPLOY_LOG_LEVEL": "DEBUG",
    }
    # Sources live both in the repository (examples/) and in tmp folders: allow any.
    topo = DevTopology(
        state_dir=tmp_path_factory.mktemp("e2e-state"),
        project=PROJECT,
        extra_env=env,
        source_base=Path("/"),
    )
    try:
        topo.start()
    except UsageError as exc:
        pytest.fail(f"the dev topology did not start: {exc}", pytrace=False)
    groups = topo.process_groups()
    yield topo
    topo.stop()
    _assert_nothing_left(topo, groups)


def _assert_nothing_left(topo: DevTopology, groups: dict[str, int]) -> None:
    running = LocalDeployer(topo.state_dir).running()
    strays = processes_in(topo.state_dir)
    alive = {name: pgid for name, pgid in groups.items() if _group_alive(pgid)}
    assert not running, f"services still running after stop(): {sorted(running)}"
    assert not strays, f"processes still running in {topo.state_dir}: {strays}"
    assert not alive, f"process groups still alive after stop(): {alive}"


def _group_alive(pgid: int) -> bool:
    """Any process, not a zombie, in group `pgid` (an emulator's JVM is a grandchild)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


@dataclass(frozen=True)
class ExampleRun:
    run_id: str
    result: RunResult
    seconds: float  # from the POST to the final result, as the client saw it


@pytest.fixture(scope="session")
def example_run(topology: DevTopology, pytestconfig: pytest.Config) -> ExampleRun:
    """examples/architecture.yaml, POSTed to the dispatcher's HTTP function, to its end."""
    request = DeployRequest(
        architecture=EXAMPLE.read_text(),
        source_root=str(EXAMPLE.parent),
        requested_by="e2e",
    )
    started = time.monotonic()
    run_id = post_request(topology.http_url, request, topology.http_token)
    result = wait_http(topology.http_url, run_id, topology.http_token)
    seconds = time.monotonic() - started
    _record(pytestconfig, topology, run_id, f"example, {seconds:.1f}s seen by the client")
    return ExampleRun(run_id, result, seconds)


def post_request(url: str, request: DeployRequest, token: str) -> str:
    body = request.model_dump_json().encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    post = urllib.request.Request(url, data=body, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(post, timeout=30) as response:
        assert response.status == 202
        return str(json.loads(response.read())["run_id"])


def wait_http(url: str, run_id: str, token: str, timeout: float = RUN_TIMEOUT) -> RunResult:
    """Poll GET /runs/RUN_ID until the run has ended."""
    deadline = time.monotonic() + timeout
    while True:
        view = fetch_run(f"{url}/runs/{run_id}", token)
        if view.status is not RunStatus.RUNNING:
            return view
        assert time.monotonic() < deadline, f"run {run_id} still running after {timeout:g}s"
        time.sleep(0.2)


@pytest.fixture
def record_timeline(
    pytestconfig: pytest.Config, topology: DevTopology
) -> Callable[[str, str], None]:
    """`record_timeline(run_id, title)`: print the run's timeline in the terminal summary."""

    def record(run_id: str, title: str) -> None:
        _record(pytestconfig, topology, run_id, title)

    return record


def _record(config: pytest.Config, topo: DevTopology, run_id: str, title: str) -> None:
    config.stash.setdefault(_TIMELINES, []).append(timeline(topo, run_id, title))


def timeline(topo: DevTopology, run_id: str, title: str) -> str:
    """Every task's release, start and finish, and the run's end, from the store."""
    store = topo.store()
    run = store.get_run(run_id)
    assert run is not None
    events: list[tuple[datetime, str]] = [(run.created_at, "run created (dispatcher)")]
    for task in store.get_tasks(run_id):
        name = f"{task.phase.value}:{task.service}"
        for label, when in (
            ("released/published", task.released_at),
            ("started", task.started_at),
            (f"finished {task.status.value}", task.finished_at),
        ):
            if when is not None:
                events.append((when, f"{name} {label}"))
    if run.finished_at is not None:
        events.append((run.finished_at, f"run {run.status.value} (closed by the aggregator)"))
    events.sort(key=lambda event: event[0])
    start = events[0][0]  # build tasks are released as the run is planned, just before it
    lines = [f"run {run_id} ({title}): {run.status.value}"]
    lines += [f"  +{(at - start).total_seconds():6.2f}s  {what}" for at, what in events]
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    timelines = terminalreporter.config.stash.get(_TIMELINES, [])
    if timelines:
        terminalreporter.section("e2e run timelines")
        for text in timelines:
            terminalreporter.write_line(text)
