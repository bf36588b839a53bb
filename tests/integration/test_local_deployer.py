"""LocalDeployer end to end: real images, real processes, real HTTP on loopback."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.local.deployer import LocalDeployer
from shared.adapters.local.processes import processes_in, start_time
from shared.architecture.model import DeploymentSpec, HealthCheck, SecretEnvVar
from shared.deployer import ContainerDeployer, Target
from shared.errors import BackendError

# Answers GET with what it sees; 503 on every path but /ready when UNHEALTHY is set.
ECHO_SERVER = """\
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def greeting():
    try:
        import localpkg
    except ImportError:
        return None
    return localpkg.GREETING

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        unhealthy = os.path.exists("UNHEALTHY") and self.path != "/ready"
        body = json.dumps({
            "version": open("version.txt").read().strip(),
            "env": dict(os.environ),
            "argv": sys.argv,
            "cwd": os.getcwd(),
            "executable": sys.executable,
            "greeting": greeting(),
        }).encode()
        self.send_response(503 if unhealthy else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

print("echo server starting", flush=True)
args = sys.argv
port = int(args[args.index("--port") + 1] if "--port" in args else os.environ["PORT"])
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """The deployer state; afterwards every service is stopped and no process survives."""
    state = tmp_path / "state"
    yield state
    LocalDeployer(state).teardown_all()
    assert processes_in(tmp_path) == []


@pytest.fixture
def deployer(state_dir: Path) -> LocalDeployer:
    return LocalDeployer(state_dir, health_timeout=20.0)


def echo_service(root: Path, version: str = "v1", **extra: str) -> Path:
    files = {"main.py": ECHO_SERVER, "version.txt": version, **extra}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def spec(source: Path, **fields: Any) -> DeploymentSpec:
    return DeploymentSpec(source_path=str(source), **fields)


def get_json(url: str) -> dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return dict(json.loads(response.read()))


def refuses_connections(url: str) -> bool:
    try:
        get_json(url)
    except urllib.error.HTTPError as exc:
        exc.close()
        return False
    except OSError:
        return True
    return False


def test_local_deployer_implements_the_container_deployer_port(deployer: LocalDeployer) -> None:
    assert isinstance(deployer, ContainerDeployer)


def test_a_built_service_is_deployed_and_answers_on_its_url(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    url = deployer.build_and_deploy("echo", "echo-sa@p.iam", spec(echo_service(tmp_path / "echo")))

    assert url.startswith("http://127.0.0.1:")
    assert get_json(url)["version"] == "v1"
    assert set(deployer.running()) == {"echo"}


def test_the_service_gets_port_its_environment_and_nothing_else_from_the_host(
    deployer: LocalDeployer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARCHDEPLOY_TEST_HOST_ONLY", "leaked")
    source = echo_service(tmp_path / "echo")
    deployment = spec(source, environment_vars={"LOG_LEVEL": "debug", "PORT": "1"})

    url = deployer.build_and_deploy("echo", "", deployment)
    seen = get_json(url)

    env = seen["env"]
    # Cloud Run's PORT (the revision's own port, behind the stable URL) wins over the spec's
    assert env["PORT"] == str(deployer.running()["echo"]["port"]) != url.rsplit(":", 1)[1]
    assert env["LOG_LEVEL"] == "debug"
    assert env["K_SERVICE"] == "echo"
    assert env["PATH"].endswith(os.environ["PATH"])
    assert "ARCHDEPLOY_TEST_HOST_ONLY" not in env
    assert Path(seen["cwd"]).is_relative_to(deployer.service_dir("echo"))
    assert seen["executable"] == deployer.python


def test_a_procfile_web_line_is_run_through_the_shell_with_port_expanded(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    source = echo_service(tmp_path / "echo", Procfile='web: python main.py --port "$PORT"\n')

    url = deployer.build_and_deploy("echo", "", spec(source))
    seen = get_json(url)

    assert seen["argv"][-2:] == ["--port", str(deployer.running()["echo"]["port"])]
    assert seen["executable"] == deployer.python  # `python` on PATH is the configured one


def test_the_health_check_path_comes_from_the_target(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    source = echo_service(tmp_path / "echo", UNHEALTHY="")  # 503 everywhere but /ready
    target = Target(health_check=HealthCheck(port=8080, path="/ready"))

    url = deployer.build_and_deploy("echo", "", spec(source), target=target)

    assert get_json(url + "/ready")["version"] == "v1"


def test_secret_env_vars_come_from_archdeploy_secret_host_vars(
    deployer: LocalDeployer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secrets = [SecretEnvVar(name="API_KEY", value_from="projects/p/secrets/api-key")]
    deployment = spec(echo_service(tmp_path / "echo"), secret_environment_vars=secrets)
    with pytest.raises(BackendError, match=r"deploying echo: .*export ARCHDEPLOY_SECRET_API_KEY="):
        deployer.build_and_deploy("echo", "", deployment)
    assert deployer.running() == {}

    monkeypatch.setenv("ARCHDEPLOY_SECRET_API_KEY", "s3cr3t-value")
    url = deployer.build_and_deploy("echo", "", deployment)

    assert get_json(url)["env"]["API_KEY"] == "s3cr3t-value"
    assert "s3cr3t-value" not in caplog.text


def make_wheel(directory: Path) -> Path:
    """A pure-Python wheel of `localpkg`, built by hand: pip installs it with no network."""
    files = {
        "localpkg/__init__.py": b'GREETING = "hello from localpkg"\n',
        "localpkg-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: localpkg\nVersion: 0.1\n",
        "localpkg-0.1.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = [f"{name},sha256={_urlsafe_sha256(data)},{len(data)}" for name, data in files.items()]
    files["localpkg-0.1.dist-info/RECORD"] = "\n".join(
        [*record, "localpkg-0.1.dist-info/RECORD,,"]
    ).encode()
    wheel = directory / "localpkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel


def _urlsafe_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def counting_python(tmp_path: Path) -> tuple[str, Path]:
    """An interpreter wrapper that logs every invocation, to count pip runs."""
    calls = tmp_path / "python-calls.log"
    wrapper = tmp_path / "bin" / "python-wrapper"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper), calls


def pip_runs(calls: Path) -> int:
    return sum("-m pip install" in line for line in calls.read_text().splitlines())


def test_requirements_are_installed_into_a_layer_cached_by_the_requirements_hash(
    state_dir: Path, tmp_path: Path
) -> None:
    python, calls = counting_python(tmp_path)
    source = echo_service(
        tmp_path / "echo", **{"requirements.txt": "--no-index\n./localpkg-0.1-py3-none-any.whl\n"}
    )
    make_wheel(source)
    deployer = LocalDeployer(state_dir, python=python, health_timeout=20.0)

    first = deployer.build("echo", spec(source))
    (source / "version.txt").write_text("v2")
    second = deployer.build("echo", spec(source))
    third = LocalDeployer(state_dir, python=python).build("echo", spec(source))

    assert pip_runs(calls) == 1
    assert first != second == third
    layers = [deployer.images.manifest(image)["layers"][1] for image in (first, second)]
    assert layers[0] == layers[1]
    seen = get_json(deployer.deploy_service("echo", "", spec(source, image=second)))
    assert seen["greeting"] == "hello from localpkg"
    assert seen["version"] == "v2"
    assert Path(seen["env"]["PYTHONPATH"]).name == "deps"


def test_a_failing_pip_install_fails_the_build_with_pips_output(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    source = echo_service(
        tmp_path / "echo", **{"requirements.txt": "--no-index\nno-such-package-xyz\n"}
    )

    with pytest.raises(
        BackendError, match=r"(?s)building echo: pip install .* failed.*no-such-package-xyz"
    ):
        deployer.build("echo", spec(source))


CRASHING = """\
import sys
for n in range(100):
    print(f"line {n}")
sys.stderr.write("boom: DATABASE_URL is not set\\n")
sys.exit(3)
"""


def test_a_crashing_service_fails_the_deploy_with_its_last_output(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    source = tmp_path / "crashy"
    source.mkdir()
    (source / "main.py").write_text(CRASHING)

    with pytest.raises(BackendError) as raised:
        deployer.build_and_deploy("crashy", "", spec(source))

    message = str(raised.value)
    assert message.startswith("deploying crashy: the process exited before")
    assert "exited with code 3" in message
    assert "boom: DATABASE_URL is not set" in message
    assert "line 99" in message
    assert "line 50\n" not in message  # only the last lines
    assert deployer.running() == {}
    assert not deployer.record_path("crashy").exists()


def test_a_service_that_never_gets_healthy_fails_after_the_timeout_and_is_stopped(
    state_dir: Path, tmp_path: Path
) -> None:
    deployer = LocalDeployer(state_dir, health_timeout=1.0)
    source = echo_service(tmp_path / "echo", UNHEALTHY="")

    started = time.monotonic()
    with pytest.raises(
        BackendError,
        match=r"(?s)deploying echo: not healthy after 1s.*HTTP 503.*echo server starting",
    ):
        deployer.build_and_deploy("echo", "", spec(source))

    assert 1.0 <= time.monotonic() - started < 10.0
    assert deployer.running() == {}
    assert processes_in(state_dir) == []


def test_redeploying_replaces_the_running_process_once_the_new_one_is_healthy(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    source = echo_service(tmp_path / "echo")
    old_url = deployer.build_and_deploy("echo", "", spec(source))
    old = deployer.running()["echo"]

    (source / "version.txt").write_text("v2")
    new_url = deployer.build_and_deploy("echo", "", spec(source))

    assert get_json(new_url)["version"] == "v2"
    assert new_url == old_url  # the stable URL now reaches the new revision
    assert refuses_connections(old["revision_url"])
    assert start_time(old["pid"]) != old["proc_start"]
    assert deployer.running()["echo"]["url"] == new_url
    assert not Path(old["root"]).exists()  # the old unpacked image is pruned


def test_another_deployer_instance_can_stop_what_this_one_started(
    deployer: LocalDeployer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = deployer.build_and_deploy("echo", "", spec(echo_service(tmp_path / "echo")))
    pid = deployer.running()["echo"]["pid"]
    monkeypatch.chdir(deployer.state_dir.parent)
    later_cli = LocalDeployer(Path(deployer.state_dir.name))  # `down` from the project dir

    assert later_cli.running()["echo"]["url"] == url
    later_cli.teardown("echo")

    assert start_time(pid) is None
    assert refuses_connections(url)
    assert later_cli.running() == deployer.running() == {}
    assert not deployer.record_path("echo").exists()
    later_cli.teardown("echo")  # again: nothing there, nothing to do
    later_cli.teardown("never-deployed")


def test_teardown_all_stops_every_service(deployer: LocalDeployer, tmp_path: Path) -> None:
    urls = [
        deployer.build_and_deploy(name, "", spec(echo_service(tmp_path / name)))
        for name in ("a", "b")
    ]

    deployer.teardown_all()

    assert deployer.running() == {}
    assert all(refuses_connections(url) for url in urls)


def test_a_recorded_pid_now_used_by_another_program_is_never_signalled(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        started = start_time(bystander.pid)
        assert started is not None
        record = {
            "service": "old",
            "pid": bystander.pid,
            "pgid": bystander.pid,
            "proc_start": started - 1,
        }
        deployer.record_path("old").parent.mkdir(parents=True)
        deployer.record_path("old").write_text(json.dumps(record))

        assert deployer.running() == {}
        deployer.teardown("old")

        assert bystander.poll() is None
        assert start_time(bystander.pid) == started
        assert not deployer.record_path("old").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_a_service_that_died_on_its_own_is_not_running_and_teardown_forgets_it(
    deployer: LocalDeployer, tmp_path: Path
) -> None:
    deployer.build_and_deploy("echo", "", spec(echo_service(tmp_path / "echo")))
    record = deployer.running()["echo"]

    os.killpg(record["pgid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while "echo" in deployer.running() and time.monotonic() < deadline:
        time.sleep(0.05)

    assert deployer.running() == {}
    deployer.teardown("echo")
    assert not deployer.record_path("echo").exists()
