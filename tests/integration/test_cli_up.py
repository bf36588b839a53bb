"""`archdeploy up` on the example, as a newcomer runs it, then `down`: nothing left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.adapters.local.deployer import LocalDeployer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "architecture.yaml"


def _archdeploy(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "shared.cli.main", "--state-dir", str(state), *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=180)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    LocalDeployer(tmp_path).teardown_all()  # even if a test failed halfway


def test_up_deploys_the_example_and_prints_a_complete_run_result(state: Path) -> None:
    proc = _archdeploy(state, "up", str(EXAMPLE), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # --json: the RunResult is all that is on stdout
    assert result["status"] == "succeeded"
    assert sorted(result["services"]) == ["director", "enrich", "ingest", "notify"]
    for name, service in result["services"].items():
        assert "@sha256:" in service["image"], name
        assert service["url"].startswith("http://127.0.0.1:"), name
        assert service["status"] == "deployed"
        assert service["build_seconds"] is not None and service["deploy_seconds"] is not None
    with urllib.request.urlopen(result["urls"]["director"] + "/services", timeout=5) as answer:
        registered = json.load(answer)["services"]
    assert sorted(registered) == ["enrich", "ingest", "notify"]

    status = _archdeploy(state, "status", "--json")
    assert json.loads(status.stdout)["run_id"] == result["run_id"]

    down = _archdeploy(state, "down", str(EXAMPLE))
    assert down.returncode == 0, down.stderr
    assert LocalDeployer(state, project="archdeploy-demo").running() == {}
    for record in (state / "run").glob("*/*/*.json"):
        pytest.fail(f"a process record survived `down`: {record}")


def test_a_failed_run_exits_1_and_keeps_what_succeeded(state: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    (broken / "ok").mkdir(parents=True)
    (broken / "ok" / "main.py").write_text(
        "import http.server, os\n"
        "http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])),"
        " http.server.SimpleHTTPRequestHandler).serve_forever()\n"
    )
    (broken / "crash").mkdir()
    (broken / "crash" / "main.py").write_text("raise SystemExit('no config found')\n")
    (broken / "services.yaml").write_text(
        "project_id: acme-dev\ndataflows:\n  f:\n    services:\n"
        "      ok: {deployment: {source_path: ok}}\n"
        "      crash: {deployment: {source_path: crash}}\n"
    )
    env = {**os.environ, "ARCHDEPLOY_HEALTH_TIMEOUT_SECONDS": "10"}
    command = [
        sys.executable,
        "-m",
        "shared.cli.main",
        "--state-dir",
        str(state),
        "up",
        str(broken / "services.yaml"),
        "--json",
    ]
    proc = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "failed"
    assert list(result["urls"]) == ["ok"]
    (error,) = result["errors"]
    assert error["service"] == "crash" and "no config found" in error["error"]
    assert "crash (deploy)" in proc.stderr
