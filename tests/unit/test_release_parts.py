"""A release's pure parts (plan order, tags, traffic splits), its check runner (HTTP and
commands, with timeouts), and the validation of `release:` and `verify:`."""

from __future__ import annotations

import http.server
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from shared.adapters import checks as checks_module
from shared.adapters.checks import HttpAndCommandChecks
from shared.adapters.gcp.run_checks import CloudRunChecks
from shared.architecture.loading import parse_architecture
from shared.architecture.model import VerifyCheck
from shared.core.plan import plan_run
from shared.core.release_plan import TAG_PATTERN, release_tag, split_traffic
from shared.errors import ArchitectureError
from shared.messages import Phase
from tests.builders import architecture, service
from tests.unit.test_validation import doc

# --- planning -------------------------------------------------------------------------


def _order(phase: Phase) -> dict[str, list[str]]:
    arch = architecture(
        {"flow": [service("db"), service("api", "db"), service("web", "api", "db")]},
        director=False,
    )
    plan = plan_run(arch, run_id="r-1", release=True)
    assert plan.phase(Phase.DEPLOY) == [] and plan.phase(Phase.ROLLBACK) == []
    return {t.service: sorted(t.depends_on) for t in plan.phase(phase)}


def test_stage_and_promote_follow_dependencies_and_revert_follows_dependents() -> None:
    assert _order(Phase.STAGE) == {"db": [], "api": ["db"], "web": ["api", "db"]}
    assert _order(Phase.PROMOTE) == _order(Phase.STAGE)
    assert _order(Phase.VERIFY) == {"db": [], "api": [], "web": []}
    assert _order(Phase.REVERT) == {"db": ["api", "web"], "api": ["web"], "web": []}


def test_the_director_is_deployed_not_released() -> None:
    plan = plan_run(architecture(), run_id="r-1", release=True)
    assert [t.service for t in plan.phase(Phase.DIRECTOR)] == ["director"]
    assert "director" not in {t.service for t in plan.phase(Phase.STAGE)}


@pytest.mark.parametrize("run_id", ["r-0123456789abcdef", "R_UPPER.and.dots", "9-starts-digit"])
def test_a_run_tag_is_valid_cloud_run_tag_syntax(run_id: str) -> None:
    tag = release_tag(run_id)
    assert TAG_PATTERN.match(tag) and tag == release_tag(run_id)
    assert len(tag) == 14  # leaves 32 characters for the service name (46 in all)


def test_a_run_tag_names_its_run() -> None:
    assert release_tag("r-0123456789abcdef") == "rel-0123456789"
    assert release_tag("r-0123456789abcdef") != release_tag("r-1123456789abcdef")


def test_traffic_splits_keep_the_old_shares_in_proportion() -> None:
    assert split_traffic({"a": 100}, "new", 10) == {"new": 10, "a": 90}
    assert split_traffic({"a": 50, "b": 50}, "new", 25) == {"new": 25, "a": 38, "b": 37}
    assert split_traffic({"a": 100}, "new", 100) == {"new": 100}
    assert split_traffic(None, "new", 10) == {"new": 100}  # nothing served before


# --- the check runner ------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(2)
        code = 200 if self.path in ("/healthz", "/slow") else 503
        body = b"all ok" if code == 200 else b"database down"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _run(check: dict[str, object], url: str) -> tuple[bool, str]:
    outcome = HttpAndCommandChecks().run(VerifyCheck.model_validate(check), url)
    return outcome.passed, outcome.detail


def test_http_checks_pass_on_status_and_text_and_keep_the_answer(server: str) -> None:
    assert _run({"http": {"path": "/healthz", "contains": "ok"}}, server)[0]
    passed, detail = _run({"http": {"path": "/orders"}}, server)
    assert not passed and "answered 503, not 200: database down" in detail
    passed, detail = _run({"http": {"path": "/healthz", "contains": "ready"}}, server)
    assert not passed and "without 'ready'" in detail


def test_an_http_check_past_its_timeout_fails(server: str) -> None:
    started = time.monotonic()
    passed, detail = _run({"http": {"path": "/slow", "timeout": "200ms"}}, server)
    assert not passed and "timed out" in detail and time.monotonic() - started < 1.5


def test_a_refused_connection_fails_the_check() -> None:
    passed, detail = _run({"http": {"path": "/"}}, "http://127.0.0.1:9")
    assert not passed and "GET http://127.0.0.1:9/" in detail


def test_a_command_gets_the_target_url_and_its_output_is_kept() -> None:
    code = "import os, sys; print('hit', os.environ['TARGET_URL']); sys.exit(3)"
    passed, detail = _run({"command": [sys.executable, "-c", code]}, "http://tag.example")
    assert not passed and detail == "exited 3: hit http://tag.example"
    ok = _run({"command": [sys.executable, "-c", "print('fine')"]}, "http://x")
    assert ok == (True, "fine")


def test_a_command_past_its_timeout_is_killed_and_fails() -> None:
    code = "import time; print('started', flush=True); time.sleep(30)"
    started = time.monotonic()
    passed, detail = _run({"command": [sys.executable, "-c", code], "timeout": "300ms"}, "http://x")
    assert not passed and detail.startswith("timed out after 0.3s")
    assert time.monotonic() - started < 10


def test_a_missing_command_fails_the_check() -> None:
    passed, detail = _run({"command": ["/no/such/smoke-test"]}, "http://x")
    assert not passed and "could not run" in detail


# --- validation ------------------------------------------------------------------------

BASE = """\
project_id: acme-dev
{release}dataflows:
  orders:
    services:
      ingest:
        deployment:
          source_path: .
          verify:
{verify}
"""


def _problems(release: str = "", verify: str = "            - command: [smoke]") -> list[str]:
    text = doc(BASE.format(release=release, verify=verify))
    with pytest.raises(ArchitectureError) as raised:
        parse_architecture(text)
    return [f"{p.path}: {p.message}" for p in raised.value.problems]


def test_release_and_verify_as_documented_load() -> None:
    text = BASE.format(
        release="release: {strategy: steps, steps: [10, 50, 100], soak: 30s}\n",
        verify='            - http: {path: /healthz, status: 200, contains: "ok", timeout: 10s}\n'
        '            - command: ["python", "smoke.py"]',
    )
    arch = parse_architecture(doc(text)).architecture
    assert arch.release is not None and arch.release.percents == [10, 50, 100]
    assert arch.release.soak == 30.0
    checks = arch.dataflows["orders"].services["ingest"].deployment.verify  # type: ignore[union-attr]
    assert [c.name for c in checks] == ["http /healthz", "command python smoke.py"]


@pytest.mark.parametrize(
    ("release", "verify", "path", "words"),
    [
        ("release: {strategy: canary}\n", None, "release.strategy", "all-at-once"),
        ("release: {strategy: steps, steps: [50, 10]}\n", None, "release", "rise strictly"),
        ("release: {steps: [10, 50]}\n", None, "release", "end at 100"),
        ("release: {soak: soon}\n", None, "release.soak", "not a duration"),
        (
            "release: {strategy: steps, steps: [10, 50, 100], soak: 5m}\n",
            None,
            "release",
            "600s: at most 420s",
        ),
        ("", "            - http: {path: healthz}", "verify[0].http.path", "start with /"),
        ("", "            - {}", "verify[0]", "exactly one"),
        ("", "            - http: {status: 99}", "verify[0].http.status", "100"),
    ],
)
def test_bad_release_or_verify_input_names_its_field(
    release: str, verify: str | None, path: str, words: str
) -> None:
    found = _problems(release, verify or "            - command: [smoke]")
    assert any(path in line and words in line for line in found), found


DIE_OF_SIGINT = "import os, signal; os.kill(os.getpid(), signal.SIGINT)"


def test_a_command_ctrl_c_reached_is_interrupted_not_failed() -> None:
    checks = HttpAndCommandChecks()
    die = {"command": [sys.executable, "-c", DIE_OF_SIGINT]}
    # A command that traps SIGINT and exits 3 is known interrupted once the CLI says so.
    trap = {"command": [sys.executable, "-c", "import sys; sys.exit(3)"]}
    assert not checks.run(VerifyCheck.model_validate(trap), "x").interrupted
    checks.interrupted.set()  # the CLI's Ctrl-C handler ran
    outcome = checks.run(VerifyCheck.model_validate(die), "x")
    assert not outcome.passed and outcome.interrupted
    assert outcome.detail.startswith("interrupted (SIGINT, exit -2)")
    outcome = checks.run(VerifyCheck.model_validate(trap), "x")
    assert outcome.interrupted and outcome.detail.startswith("interrupted (Ctrl-C): exited 3")
    passing = {"command": [sys.executable, "-c", "print('fine')"]}
    assert checks.run(VerifyCheck.model_validate(passing), "x").passed


class _HandlerRunsMeanwhile(threading.Event):
    """The Ctrl-C handler's flag, set while the check waits for it: the key press reached
    the command first, this process's handler a moment later."""

    def wait(self, timeout: float | None = None) -> bool:
        self.set()
        return super().wait(timeout)


def test_a_command_that_dies_of_sigint_waits_for_the_ctrl_c_handler() -> None:
    checks = HttpAndCommandChecks()
    checks.interrupted = _HandlerRunsMeanwhile()
    die = {"command": [sys.executable, "-c", DIE_OF_SIGINT]}
    assert checks.run(VerifyCheck.model_validate(die), "x").interrupted


@pytest.mark.parametrize(
    "code", [DIE_OF_SIGINT, "import sys; sys.exit(130)"], ids=["sigint", "exit-130"]
)
@pytest.mark.parametrize("runner", ["local", "cloud-run"])
def test_a_command_that_dies_of_sigint_with_no_ctrl_c_pressed_failed(
    code: str, runner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody pressed Ctrl-C (a worker on Cloud Run has no terminal): a command that
    exits 130 or dies of SIGINT failed (taken as interrupted, its run ended `cancelled`)."""
    monkeypatch.setattr(checks_module, "CTRL_C_GRACE", 0.0, raising=False)
    checks = HttpAndCommandChecks() if runner == "local" else CloudRunChecks(lambda _a: "token")
    outcome = checks.run(VerifyCheck.model_validate({"command": [sys.executable, "-c", code]}), "x")
    assert not outcome.passed and not outcome.interrupted
    assert outcome.detail.startswith("exited "), outcome.detail
