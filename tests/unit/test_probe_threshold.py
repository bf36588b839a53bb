"""`deployed()` judges health as Cloud Run's probes do: unhealthy only after three
failed probes in a row, so one slow answer does not get a healthy service redeployed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.adapters.local.processes import probe_threshold


class Flaky:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.seen = 0


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, Flaky]]:
    flaky = Flaky(request.param)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            flaky.seen += 1
            self.send_response(503 if flaky.seen <= flaky.failures else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", flaky
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("server", [2], indirect=True)
def test_two_failures_then_an_answer_is_healthy(server: tuple[str, Flaky]) -> None:
    url, flaky = server
    assert probe_threshold(url, 5.0) == (True, "HTTP 200")
    assert flaky.seen == 3


@pytest.mark.parametrize("server", [3], indirect=True)
def test_three_failures_in_a_row_are_unhealthy(server: tuple[str, Flaky]) -> None:
    url, flaky = server
    assert probe_threshold(url, 5.0) == (False, "HTTP 503")
    assert flaky.seen == 3


@pytest.mark.parametrize("server", [0], indirect=True)
def test_a_healthy_service_is_probed_once(server: tuple[str, Flaky]) -> None:
    url, flaky = server
    assert probe_threshold(url, 5.0)[0]
    assert flaky.seen == 1
