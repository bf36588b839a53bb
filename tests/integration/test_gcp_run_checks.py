"""The Cloud Run check runner: an ID token for the service's own URL on every check, from
a token source (a fake one here: no network but loopback), reused per audience."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shared.adapters.gcp.run_checks import TOKEN_REUSE, CloudRunChecks, service_audience
from shared.architecture.model import VerifyCheck


@pytest.mark.parametrize(
    ("url", "audience"),
    [
        (
            "https://rel-r-1a2b---ingest-4f2a9c1d0e-ew.a.run.app",
            "https://ingest-4f2a9c1d0e-ew.a.run.app",
        ),
        (
            "https://canary---enrich-123456789012.europe-west1.run.app/x?y=1",
            "https://enrich-123456789012.europe-west1.run.app",
        ),
        ("https://ingest-4f2a9c1d0e-ew.a.run.app/", "https://ingest-4f2a9c1d0e-ew.a.run.app"),
    ],
)
def test_the_audience_is_the_services_own_url_without_the_tag(url: str, audience: str) -> None:
    assert service_audience(url) == audience


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    """Answers 200 `ok` with a Bearer token, 403 without, as a private Cloud Run URL."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            authorization = self.headers.get("Authorization", "")
            seen.append(authorization)
            status, body = (200, b"ok") if authorization.startswith("Bearer ") else (403, b"no")
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


class Tokens:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, audience: str) -> str:
        self.asked.append(audience)
        return f"token-{len(self.asked)}-for-{audience}"


def test_an_http_check_sends_a_bearer_id_token_for_the_audience(
    server: tuple[str, list[str]],
) -> None:
    url, seen = server
    tokens, now = Tokens(), [0.0]
    checks = CloudRunChecks(tokens, clock=lambda: now[0])
    check = VerifyCheck.model_validate({"http": {"path": "/healthz", "contains": "ok"}})

    first, again = checks.run(check, url), checks.run(check, url)
    now[0] = TOKEN_REUSE + 1
    later = checks.run(check, url)

    assert first.passed and again.passed and later.passed, first.detail
    assert seen == [f"Bearer token-1-for-{url}"] * 2 + [f"Bearer token-2-for-{url}"]
    assert tokens.asked == [url, url]  # reused, then fetched again when near expiry


def test_without_credentials_the_check_fails_saying_why_and_what_to_do(
    server: tuple[str, list[str]],
) -> None:
    url, seen = server

    def no_credentials(audience: str) -> str:
        raise RuntimeError("Your default credentials were not found")

    outcome = CloudRunChecks(no_credentials).run(
        VerifyCheck.model_validate({"http": {"path": "/"}}), url
    )

    assert not outcome.passed and seen == []
    assert f"no ID token for {url}" in outcome.detail
    assert "not found" in outcome.detail and "deployment.public" in outcome.detail


def test_a_command_check_gets_the_token_beside_the_target_url() -> None:
    code = "import os, sys; sys.exit(os.environ['ID_TOKEN'] != 'token-1-for-https://a.run.app')"
    check = VerifyCheck.model_validate({"command": [sys.executable, "-c", code]})

    outcome = CloudRunChecks(Tokens()).run(check, "https://t---a.run.app")

    assert outcome.passed, outcome.detail


def test_bootstrap_wires_the_cloud_run_runner_for_the_gcp_deployer(tmp_path: Any) -> None:
    from shared.adapters.checks import HttpAndCommandChecks
    from shared.bootstrap import make_checks
    from shared.settings import Settings

    gcp = Settings(state_dir=tmp_path, deployer="gcp", project="p", source_bucket="b")

    assert isinstance(make_checks(gcp), CloudRunChecks)
    assert isinstance(make_checks(Settings(state_dir=tmp_path)), HttpAndCommandChecks)
