"""Local revisions, tags and traffic with real processes: a staged revision has its own
URL and no traffic, the stable URL splits by percent, refusals change nothing, untag
frees the port and stops an idle revision, moves drop no request, and `status` says it."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.adapters.local.deployer import LocalDeployer
from shared.adapters.local.processes import free_port, marked, processes_in
from shared.adapters.local.traffic import TrafficState
from shared.cli.local import show_serving
from shared.deployer import TrafficDeployer
from shared.errors import BackendError
from tests.integration.test_local_deployer import (
    echo_service,
    get_json,
    refuses_connections,
    spec,
)

MAX_REQUESTS = 20_000  # bounds the load loop should a move hang

# Echoes a POST body's length and how it came (Content-Length or chunked), and answers
# GET /big with 4 MiB, to see requests and answers streamed through the front end whole.
BODY_SERVER = """\
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"x" * (4 << 20) if self.path == "/big" else b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()

    def do_POST(self):
        size = int(self.headers.get("Content-Length") or -1)
        data = self.rfile.read(size) if size >= 0 else b""
        body = f"{len(data)} {self.headers.get('Transfer-Encoding', '-')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


@pytest.fixture
def deployer(tmp_path: Path) -> Iterator[LocalDeployer]:
    deployer = LocalDeployer(tmp_path / "state", health_timeout=20.0)
    yield deployer
    deployer.teardown_all()
    assert processes_in(tmp_path) == []
    assert marked(deployer.instances.state_id) == []


def _version(url: str) -> str:
    return str(get_json(url)["version"])


def _two_revisions(deployer: LocalDeployer, source: Path) -> tuple[str, str, str]:
    """web v1 serving, v2 staged as `canary`: (stable URL, v1's revision, v2's revision)."""
    url = deployer.build_and_deploy("web", "", spec(source))
    first = deployer.running()["web"]["revision"]
    (source / "version.txt").write_text("v2")
    image = deployer.build("web", spec(source))
    staged = deployer.stage("web", "", spec(source, image=image), tag="canary")
    return url, str(first), staged.revision


def test_the_local_deployer_is_a_traffic_deployer(deployer: LocalDeployer) -> None:
    assert isinstance(deployer, TrafficDeployer)


def test_staging_a_new_service_creates_it_with_all_traffic(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    source = echo_service(tmp_path / "web")
    image = deployer.build("web", spec(source))

    staged = deployer.stage("web", "", spec(source, image=image), tag="first")

    traffic = deployer.traffic("web")
    assert staged.created and traffic is not None
    assert traffic.percents == {staged.revision: 100}
    assert traffic.tag_urls == {"first": staged.url} and staged.url != traffic.url
    assert _version(traffic.url) == _version(staged.url) == "v1"


def test_a_staged_revision_gets_no_traffic_and_its_tag_url_reaches_only_it(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    source = echo_service(tmp_path / "web")
    url, first, second = _two_revisions(deployer, source)
    traffic = deployer.traffic("web")
    assert traffic is not None
    assert traffic.percents == {first: 100} and traffic.tags == {"canary": second}

    assert {_version(url) for _ in range(20)} == {"v1"}
    assert {_version(traffic.tag_urls["canary"]) for _ in range(20)} == {"v2"}


def test_staging_the_same_config_and_tag_again_starts_nothing(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    source = echo_service(tmp_path / "web")
    _, _, second = _two_revisions(deployer, source)
    pids = {p.pid for p in marked(deployer.instances.state_id)}
    image = deployer.build("web", spec(source))

    again = deployer.stage("web", "", spec(source, image=image), tag="canary")

    assert again.revision == second and not again.created
    assert {p.pid for p in marked(deployer.instances.state_id)} == pids


def test_the_stable_url_splits_400_requests_by_percent(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    source = echo_service(tmp_path / "web")
    url, first, second = _two_revisions(deployer, source)

    traffic = deployer.set_traffic("web", {first: 75, second: 25})
    counts = Counter(_version(url) for _ in range(400))

    assert traffic.percents == {first: 75, second: 25} and traffic.tags == {"canary": second}
    # Deterministic weighted round-robin: exact for one client; a little slack for retries.
    assert abs(counts["v1"] - 300) <= 4 and counts["v1"] + counts["v2"] == 400


def test_set_traffic_refusals_change_nothing(deployer: LocalDeployer, tmp_path: Path) -> None:
    source = echo_service(tmp_path / "web")
    _, first, second = _two_revisions(deployer, source)

    for percents, refusal in [
        ({first: 50, second: 40}, "sum to 90"),
        ({first: 50, "web-nope": 50}, "no revision 'web-nope'"),
        ({first: 150, second: -50}, "gets 150: give 0 to 100"),
    ]:
        with pytest.raises(BackendError, match=refusal):
            deployer.set_traffic("web", percents)
    with pytest.raises(BackendError, match="not deployed"):
        deployer.set_traffic("ghost", {first: 100})

    traffic = deployer.traffic("web")
    assert traffic is not None and traffic.percents == {first: 100}


def test_untag_frees_the_port_and_stops_a_revision_with_no_traffic(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    source = echo_service(tmp_path / "web")
    url, _, second = _two_revisions(deployer, source)
    traffic = deployer.traffic("web")
    assert traffic is not None
    tag_url = traffic.tag_urls["canary"]
    key = str(deployer.running()["web"]["key"])
    staged = TrafficState.load(deployer.instances, key).records[second]

    deployer.untag("web", "canary")
    deployer.untag("web", "canary")  # idempotent

    assert refuses_connections(tag_url)
    assert deployer.gateway.tag_ports(key) == {}
    assert refuses_connections(str(staged["revision_url"]))  # stopped: no traffic, no tag
    assert marked(str(staged["marker"])) == []
    assert _version(url) == "v1"


def test_traffic_back_to_a_stopped_revision_starts_it_again(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    # v2 promoted: v1 has neither traffic nor a tag, so its process stops (scaled to zero).
    source = echo_service(tmp_path / "web")
    url, first, second = _two_revisions(deployer, source)
    key = str(deployer.running()["web"]["key"])
    old = TrafficState.load(deployer.instances, key).records[first]
    deployer.set_traffic("web", {second: 100})
    assert refuses_connections(str(old["revision_url"]))
    assert first not in TrafficState.load(deployer.instances, key).records

    # What a rollback does: v1's saved deployment starts again and takes the traffic.
    traffic = deployer.set_traffic("web", {first: 100})

    assert traffic.percents == {first: 100}
    assert _version(url) == "v1"
    record = TrafficState.load(deployer.instances, key).records[first]
    assert record["instance"] != old["instance"] and _version(str(record["revision_url"])) == "v1"
    assert deployer.running()["web"]["revision"] == first


def test_moving_traffic_under_load_drops_no_request(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    source = echo_service(tmp_path / "web")
    url, first, second = _two_revisions(deployer, source)
    done = threading.Event()
    outcomes: list[tuple[int, str]] = []

    def load() -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while not done.is_set() and len(outcomes) < MAX_REQUESTS:
            try:
                with opener.open(url, timeout=10) as response:
                    outcomes.append((response.status, ""))
            except urllib.error.HTTPError as exc:
                with exc:
                    outcomes.append((exc.code, exc.read().decode()))
            except OSError as exc:
                outcomes.append((0, str(exc)))

    loader = threading.Thread(target=load)
    loader.start()
    try:
        for percents in ({first: 50, second: 50}, {first: 0, second: 100}):
            deployer.set_traffic("web", percents)
        deployer.untag("web", "canary")  # second keeps serving; first stops, drained
        deployer.build_and_deploy("web", "", spec(source))  # the same config again: 100 %
    finally:
        done.set()
        loader.join(timeout=30)
    failed = [o for o in outcomes if o[0] != 200]
    print(f"{len(outcomes)} requests during 4 traffic moves, {len(failed)} failed")
    assert len(outcomes) > 4 and failed == []
    assert _version(url) == "v2"


def test_status_shows_each_revision_with_its_percent_and_tag_url(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    source = echo_service(tmp_path / "web")
    _, first, second = _two_revisions(deployer, source)
    deployer.set_traffic("web", {first: 90, second: 10})
    traffic = deployer.traffic("web")
    assert traffic is not None
    lines: list[str] = []

    show_serving(deployer.state_dir, lines.append)

    text = "\n".join(lines)
    assert f"{first}" in text and f"{second}" in text
    assert any(line.split()[:2] == [first, "90%"] for line in lines)
    assert any(
        line.split()[:2] == [second, "10%"] and traffic.tag_urls["canary"] in line for line in lines
    )


def test_pinning_another_local_port_rebinds_the_service(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    source = echo_service(tmp_path / "web")
    first_port, second_port = free_port(), free_port()
    old = deployer.build_and_deploy("web", "", spec(source, local_port=first_port))
    deployed = deployer.deployed("web")
    assert deployed is not None

    new = deployer.build_and_deploy("web", "", spec(source, local_port=second_port))

    assert new == f"http://127.0.0.1:{second_port}" and _version(new) == "v1"
    assert refuses_connections(old)  # no stale route left on the old port
    assert deployer.deployed("web").fingerprint != deployed.fingerprint  # type: ignore[union-attr]


def test_bodies_are_streamed_whole_both_ways(deployer: LocalDeployer, tmp_path: Path) -> None:
    source = tmp_path / "body"
    source.mkdir()
    (source / "main.py").write_text(BODY_SERVER)
    url = deployer.build_and_deploy("body", "", spec(source))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    upload = b"y" * (3 << 20)

    with opener.open(urllib.request.Request(url + "/up", data=upload), timeout=30) as response:
        echoed = response.read().decode()
    with opener.open(url + "/big", timeout=30) as response:
        big = response.read()

    assert echoed == f"{len(upload)} -"  # whole, with its Content-Length, not chunked
    assert len(big) == 4 << 20
    with opener.open(urllib.request.Request(url, method="HEAD"), timeout=10) as response:
        assert response.headers["Content-Length"] == "2"  # what a GET would carry


def test_teardown_all_frees_the_tags_ports(deployer: LocalDeployer, tmp_path: Path) -> None:
    _two_revisions(deployer, echo_service(tmp_path / "web"))
    key = str(deployer.running()["web"]["key"])
    assert set(deployer.gateway.tag_ports(key)) == {"canary"}

    deployer.teardown_all()

    assert deployer.gateway.tag_ports(key) == {}
    assert deployer.gateway.known_port(key) is not None  # the stable port stays reserved
