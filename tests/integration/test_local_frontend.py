"""The local front end: stable URLs, redeploys that drop no request, 502 for a dead
revision, a dead front end started again. Real processes, real HTTP on loopback."""

from __future__ import annotations

import os
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from shared.adapters.local.deployer import LocalDeployer
from shared.adapters.local.processes import free_port, marked, processes_in, start_time
from shared.errors import BackendError
from tests.integration.test_local_deployer import (
    echo_service,
    get_json,
    refuses_connections,
    spec,
)

REDEPLOYS = 5
MAX_REQUESTS = 20_000  # bounds the load loop should the redeploys hang


@pytest.fixture
def deployer(tmp_path: Path) -> Iterator[LocalDeployer]:
    """A deployer; afterwards every service and the front end are stopped, none survives."""
    deployer = LocalDeployer(tmp_path / "state", health_timeout=20.0)
    yield deployer
    deployer.teardown_all()
    assert processes_in(tmp_path) == []
    assert marked(deployer.instances.state_id) == []


def _get(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def _front_end_pid(deployer: LocalDeployer) -> int:
    record = deployer.gateway.running()
    assert record is not None
    return int(record["pid"])


def test_a_service_keeps_its_url_across_redeploys_and_new_deployer_processes(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    source = echo_service(tmp_path / "echo")
    url = deployer.build_and_deploy("echo", "", spec(source))
    first = deployer.running()["echo"]
    (source / "version.txt").write_text("v2")

    later = LocalDeployer(deployer.state_dir, health_timeout=20.0)  # as a new CLI would
    assert later.build_and_deploy("echo", "", spec(source)) == url
    assert get_json(url)["version"] == "v2"
    assert refuses_connections(first["revision_url"])
    assert later.deployed("echo") is not None and later.deployed("echo").url == url  # type: ignore[union-attr]


def test_five_redeploys_under_load_drop_no_request(deployer: LocalDeployer, tmp_path: Path) -> None:
    source = echo_service(tmp_path / "echo")
    url = deployer.build_and_deploy("echo", "", spec(source))
    done = threading.Event()
    outcomes: list[tuple[int, str]] = []

    def load() -> None:
        while not done.is_set() and len(outcomes) < MAX_REQUESTS:
            try:
                status, body = _get(url)
                outcomes.append((status, body[:40] if status == 200 else body))
            except OSError as exc:
                outcomes.append((0, str(exc)))

    loader = threading.Thread(target=load)
    loader.start()
    try:
        for version in range(2, 2 + REDEPLOYS):
            (source / "version.txt").write_text(f"v{version}")
            assert deployer.build_and_deploy("echo", "", spec(source)) == url
    finally:
        done.set()
        loader.join(timeout=30)
    failed = [o for o in outcomes if o[0] != 200]
    print(f"{len(outcomes)} requests during {REDEPLOYS} redeploys, {len(failed)} failed")
    assert len(outcomes) > REDEPLOYS
    assert failed == []
    assert get_json(url)["version"] == f"v{1 + REDEPLOYS}"


def test_a_dead_revision_gets_502_naming_the_service(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    url = deployer.build_and_deploy("echo", "", spec(echo_service(tmp_path / "echo")))
    record = deployer.running()["echo"]
    os.killpg(int(record["pgid"]), signal.SIGKILL)

    status, body = _get(url)

    assert status == 502
    assert "service echo" in body and record["revision"] in body and "did not answer" in body
    assert deployer.deployed("echo") is None  # so the next `up` deploys it again


def test_a_killed_front_end_is_started_again_by_the_next_command(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    url = deployer.build_and_deploy("echo", "", spec(echo_service(tmp_path / "echo")))
    pid = _front_end_pid(deployer)
    front = marked(deployer.gateway.marker_prefix)
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    psutil.wait_procs(front, timeout=10)
    assert refuses_connections(url)

    seen = LocalDeployer(deployer.state_dir).deployed("echo")  # what `up` asks first

    assert seen is not None and seen.url == url
    assert get_json(url)["version"] == "v1"
    assert _front_end_pid(deployer) != pid


def test_teardown_stops_the_front_end_with_the_last_service(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    url = deployer.build_and_deploy("echo", "", spec(echo_service(tmp_path / "echo")))
    other = deployer.build_and_deploy("other", "", spec(echo_service(tmp_path / "other")))
    pid = _front_end_pid(deployer)
    prefix = deployer.gateway.marker_prefix

    deployer.teardown("echo")
    status, body = _get(url) if not refuses_connections(url) else (0, "")
    assert status == 0, body  # the port is closed, not answered
    assert get_json(other)["version"] == "v1"
    deployer.teardown("other")

    assert start_time(pid) is None
    assert marked(prefix) == []


def test_a_pinned_port_is_the_url_and_may_not_be_shared(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    source = echo_service(tmp_path / "echo")
    port = free_port()

    url = deployer.build_and_deploy("echo", "", spec(source, local_port=port))

    assert url == f"http://127.0.0.1:{port}"
    assert get_json(url)["version"] == "v1"
    with pytest.raises(BackendError, match=f"local_port {port} .* already the port of"):
        deployer.build_and_deploy("other", "", spec(source, local_port=port))
    assert "other" not in deployer.running()


def test_rollback_keeps_the_url_and_only_three_deployments_are_kept(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    source = echo_service(tmp_path / "echo")
    url = deployer.build_and_deploy("echo", "", spec(source))
    first = deployer.running()["echo"]["revision"]
    for version in ("v2", "v3", "v4"):
        (source / "version.txt").write_text(version)
        deployer.build_and_deploy("echo", "", spec(source))

    key = deployer.running()["echo"]["key"]
    saved = deployer.history.revisions(key)
    assert len(saved) == 3 and first not in saved
    back_to = sorted(saved, key=lambda r: r != deployer.running()["echo"]["revision"])[-1]
    assert deployer.rollback("echo", back_to) == url
    assert deployer.running()["echo"]["revision"] == back_to
    assert get_json(url)["version"] in ("v2", "v3")


def test_teardown_all_forgets_every_route_and_keeps_the_ports(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    url = deployer.build_and_deploy("echo", "", spec(echo_service(tmp_path / "echo")))
    deployer.teardown_all()
    assert marked(deployer.gateway.marker_prefix) == []

    other = deployer.build_and_deploy("other", "", spec(echo_service(tmp_path / "other")))

    assert get_json(other)["version"] == "v1"
    assert refuses_connections(url)  # no stale route to the stopped service
    assert deployer.build_and_deploy("echo", "", spec(tmp_path / "echo")) == url
