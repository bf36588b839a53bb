"""Services can reach the director on Cloud Run: invoker IAM, ID tokens, reachable URLs.

Against the strict fake Cloud Run with `serve_urls`: each service URL is a local ingress
that, like Cloud Run (run/docs/securing/managing-access, run/docs/configuring/custom-
audiences), admits a request only with an ID token whose audience is that URL, of an
account holding roles/run.invoker on it, or anyone when allUsers holds it. The example
services run as local processes behind those URLs, with a fake metadata server each.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.cloud import run_v2
from google.cloud.run_v2.services.services.transports import ServicesGrpcTransport

from shared.adapters.gcp.deployer import GcpDeployer
from shared.architecture.model import DeploymentSpec
from shared.deployer import Target
from shared.errors import BackendError
from tests.fakes_google.cloudrun_server import FakeCloudRun
from tests.fakes_google.fixtures import FAKE_PROJECT, FAKE_REGION, RUNTIME_ACCOUNT
from tests.fakes_google.identity import MetadataServer, TokenAuthority
from tests.fakes_google.run_access import PROJECT_NUMBER, RUN_DEVELOPER

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "services"
IMAGE = "europe-west1-docker.pkg.dev/archdeploy-fake/archdeploy/svc@sha256:" + "b" * 64
TARGET = Target(project_id=FAKE_PROJECT, region=FAKE_REGION)


def account(name: str) -> str:
    return f"{name}@{FAKE_PROJECT}.iam.gserviceaccount.com"


def _deployer(fake: FakeCloudRun) -> Iterator[tuple[GcpDeployer, FakeCloudRun]]:
    fake.start()
    channel = grpc.insecure_channel(fake.address)
    client = run_v2.ServicesClient(transport=ServicesGrpcTransport(channel=channel))
    deployer = GcpDeployer(
        FAKE_PROJECT,
        FAKE_REGION,
        source_bucket="unused",
        run_client=client,
        deploy_timeout=10,
        retry_attempts=3,
        retry_base_delay=0.01,
        poll_interval=0.01,
        default_service_account=RUNTIME_ACCOUNT,
    )
    yield deployer, fake
    deployer.close()
    channel.close()
    fake.stop()


@pytest.fixture
def served() -> Iterator[tuple[GcpDeployer, FakeCloudRun]]:
    yield from _deployer(FakeCloudRun(serve_urls=True))


@pytest.fixture
def developer_only() -> Iterator[tuple[GcpDeployer, FakeCloudRun]]:
    """The worker as the issue found it: roles/run.developer and nothing to set IAM."""
    yield from _deployer(FakeCloudRun(permissions=RUN_DEVELOPER, serve_urls=True))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, token: str = "") -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_healthy(url: str, timeout: float = 30.0) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout
    answer: tuple[int, Any] = (0, "not started")
    while time.monotonic() < deadline:
        try:
            answer = _get(f"{url}/healthz")
        except OSError as exc:
            answer = (0, str(exc))
        if answer[0] == 200:
            break
        time.sleep(0.2)
    return answer


class Instances:
    """Example services running locally as Cloud Run would run them (K_SERVICE, PORT, a
    metadata server for their account)."""

    def __init__(self, authority: TokenAuthority) -> None:
        self.authority = authority
        self.processes: list[subprocess.Popen[bytes]] = []
        self.metadata: list[MetadataServer] = []

    def start(self, service: str, email: str, env: dict[str, str]) -> str:
        meta = MetadataServer(
            self.authority,
            email,
            project=FAKE_PROJECT,
            project_number=PROJECT_NUMBER,
            region=FAKE_REGION,
        )
        self.metadata.append(meta)
        port = _free_port()
        environ = {
            **os.environ,
            **env,
            "PORT": str(port),
            "K_SERVICE": service,
            "GCE_METADATA_HOST": meta.host,
            "PYTHONPATH": str(EXAMPLES / "common"),
        }
        main = EXAMPLES / service / "main.py"
        self.processes.append(subprocess.Popen([sys.executable, str(main)], env=environ))
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(timeout=10)
        for meta in self.metadata:
            meta.stop()


@pytest.fixture
def instances(served: tuple[GcpDeployer, FakeCloudRun]) -> Iterator[Instances]:
    running = Instances(served[1].authority)
    yield running
    running.stop()


def _deploy_director_and_ingest(
    deployer: GcpDeployer, fake: FakeCloudRun, instances: Instances
) -> tuple[str, str]:
    director_url = deployer.deploy_service(
        "director", "director-sa", DeploymentSpec(image=IMAGE), target=TARGET
    )
    director_name = f"projects/{FAKE_PROJECT}/locations/{FAKE_REGION}/services/director"
    fake.ingresses[director_name].backend = instances.start("director", account("director-sa"), {})
    env = {"SERVICE_DIRECTOR_URL": director_url, "SERVICE_NAME": "ingest"}
    deployer.deploy_service(
        "ingest", "ingest-sa", DeploymentSpec(image=IMAGE, environment_vars=env), target=TARGET
    )
    return director_name, instances.start("ingest", account("ingest-sa"), env)


def test_a_service_handed_the_directors_url_may_invoke_it_and_registers_a_reachable_url(
    served: tuple[GcpDeployer, FakeCloudRun], instances: Instances
) -> None:
    deployer, fake = served
    director_name, ingest = _deploy_director_and_ingest(deployer, fake, instances)

    # The ingest account got roles/run.invoker on the director, before ingest was deployed
    assert fake.invokers(director_name) == {f"serviceAccount:{account('ingest-sa')}"}
    methods = [name for name, _ in fake.requests]
    assert methods.index("SetIamPolicy") < methods.index("CreateService", 3)
    # so ingest's registration passes Cloud Run's door and its health check turns 200
    assert _wait_healthy(ingest)[0] == 200
    director = fake.ingresses[director_name]
    assert ("POST", "/register", 200) in director.decisions
    # with the URL Cloud Run gives ingest (its deterministic one), not 127.0.0.1
    _, listing = _get(f"{director.backend}/services")
    ingest_service = fake.services[director_name.replace("director", "ingest")]
    registered = listing["services"]["ingest"]["url"]
    assert registered == f"https://ingest-{PROJECT_NUMBER}.{FAKE_REGION}.run.app"
    assert registered in ingest_service.urls


def test_a_service_may_invoke_each_dependency_whose_url_it_is_handed(
    served: tuple[GcpDeployer, FakeCloudRun], instances: Instances
) -> None:
    deployer, fake = served
    director_name, ingest_backend = _deploy_director_and_ingest(deployer, fake, instances)
    ingest_name = director_name.replace("director", "ingest")
    fake.ingresses[ingest_name].backend = ingest_backend
    ingest_url = fake.services[ingest_name].uri
    director_url = fake.services[director_name].uri
    # enrich lists ingest in `dependencies`: the run hands it INGEST_URL (Cloud Run's uri)
    env = {"SERVICE_DIRECTOR_URL": director_url, "INGEST_URL": ingest_url}
    spec = DeploymentSpec(image=IMAGE, environment_vars=env)
    deployer.deploy_service("enrich", "enrich-sa", spec, target=TARGET)

    enrich = f"serviceAccount:{account('enrich-sa')}"
    assert enrich in fake.invokers(ingest_name)
    assert enrich in fake.invokers(director_name)
    assert _wait_healthy(ingest_backend)[0] == 200
    token = instances.authority.mint(account("enrich-sa"), ingest_url)
    assert _get(f"{ingest_url}/healthz", token)[0] == 200  # enrich's call with its ID token
    stranger = instances.authority.mint(account("notify-sa"), ingest_url)
    assert _get(f"{ingest_url}/healthz", stranger)[0] == 403  # a service not handed it


def test_the_invoker_grant_is_idempotent_and_keeps_other_bindings(
    served: tuple[GcpDeployer, FakeCloudRun],
) -> None:
    deployer, fake = served
    url = deployer.deploy_service("director", "", DeploymentSpec(image=IMAGE), target=TARGET)
    env = {"SERVICE_DIRECTOR_URL": url}
    for name in ("ingest", "enrich", "ingest"):
        spec = DeploymentSpec(image=IMAGE, environment_vars=env, memory="1Gi")
        deployer.deploy_service(name, f"{name}-sa", spec, target=TARGET)

    director = f"projects/{FAKE_PROJECT}/locations/{FAKE_REGION}/services/director"
    assert fake.invokers(director) == {
        f"serviceAccount:{account('ingest-sa')}",
        f"serviceAccount:{account('enrich-sa')}",
    }
    assert len(fake.calls("SetIamPolicy")) == 2  # the second ingest deploy changed nothing


def test_without_the_grant_cloud_run_refuses_the_registration(
    served: tuple[GcpDeployer, FakeCloudRun], instances: Instances
) -> None:
    deployer, fake = served
    url = deployer.deploy_service(
        "director", "director-sa", DeploymentSpec(image=IMAGE), target=TARGET
    )
    name = f"projects/{FAKE_PROJECT}/locations/{FAKE_REGION}/services/director"
    backend = instances.start("director", account("director-sa"), {})
    fake.ingresses[name].backend = backend
    assert _wait_healthy(backend)[0] == 200
    # An account that was never granted (as every service was before this fix)
    stranger = instances.authority.mint(account("ingest-sa"), url)
    assert _get(f"{url}/services", stranger)[0] == 403
    assert _get(f"{url}/services")[0] == 403  # no token
    granted = account("director-sa")
    deployer._grants.grant(name, f"serviceAccount:{granted}", "test")
    wrong_audience = instances.authority.mint(granted, "https://elsewhere.a.run.app")
    assert _get(f"{url}/services", wrong_audience)[0] == 401
    assert _get(f"{url}/services", instances.authority.mint(granted, url))[0] == 200


def test_a_public_service_binds_all_users_and_needs_no_token(
    served: tuple[GcpDeployer, FakeCloudRun], instances: Instances
) -> None:
    deployer, fake = served
    spec = DeploymentSpec(image=IMAGE, public=True)
    url = deployer.deploy_service("director", "director-sa", spec, target=TARGET)
    name = f"projects/{FAKE_PROJECT}/locations/{FAKE_REGION}/services/director"
    fake.ingresses[name].backend = instances.start("director", account("director-sa"), {})

    assert fake.invokers(name) == {"allUsers"}
    assert _wait_healthy(url)[0] == 200


def test_a_worker_that_may_not_set_iam_policies_is_told_which_role_to_get(
    developer_only: tuple[GcpDeployer, FakeCloudRun],
) -> None:
    deployer, fake = developer_only
    url = deployer.deploy_service("director", "", DeploymentSpec(image=IMAGE), target=TARGET)
    spec = DeploymentSpec(image=IMAGE, environment_vars={"SERVICE_DIRECTOR_URL": url})

    with pytest.raises(BackendError) as caught:
        deployer.deploy_service("ingest", "ingest-sa", spec, target=TARGET)

    message = str(caught.value)
    assert "run.services.setIamPolicy" in message and "archdeployRunInvokerAdmin" in message
    assert not caught.value.retryable
    assert fake.calls("CreateService")[-1].service_id == "director"  # ingest never deployed


def test_a_service_without_an_account_runs_as_the_runtime_account_not_compute_default(
    served: tuple[GcpDeployer, FakeCloudRun],
) -> None:
    deployer, fake = served
    deployer.deploy_service("ingest", "", DeploymentSpec(image=IMAGE), target=TARGET)
    assert fake.calls("CreateService")[0].service.template.service_account == RUNTIME_ACCOUNT

    deployer.default_service_account = ""  # as before: Cloud Run's compute default account
    with pytest.raises(BackendError, match=r"iam\.serviceaccounts\.actAs.*-compute@developer"):
        deployer.deploy_service("enrich", "", DeploymentSpec(image=IMAGE), target=TARGET)


def test_a_secret_the_account_may_not_read_fails_the_deploy_with_the_fix(
    served: tuple[GcpDeployer, FakeCloudRun],
) -> None:
    from shared.architecture.model import SecretEnvVar

    deployer, fake = served
    secret = [SecretEnvVar(name="DB_PASSWORD", value_from="db-password")]
    spec = DeploymentSpec(image=IMAGE, secret_environment_vars=secret)
    with pytest.raises(BackendError, match=r"roles/secretmanager\.secretAccessor"):
        deployer.deploy_service("ingest", "ingest-sa", spec, target=TARGET)

    fake.grant_secret(f"projects/{FAKE_PROJECT}/secrets/db-password", account("ingest-sa"))
    assert deployer.deploy_service("ingest", "ingest-sa", spec, target=TARGET)


def test_without_a_metadata_server_the_example_registers_its_local_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES / "common"))
    import registration  # type: ignore[import-not-found]

    monkeypatch.setenv("K_SERVICE", "ingest")  # as the local deployer sets it
    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{_free_port()}")  # nobody there
    monkeypatch.delenv("SERVICE_URL", raising=False)
    try:
        started = time.monotonic()
        assert registration.own_url(8080) == "http://127.0.0.1:8080"
        assert registration.id_token("https://director.example") is None
        assert time.monotonic() - started < 5
        assert registration._NO_METADATA.is_set()  # and it is not asked again
    finally:
        registration._NO_METADATA.clear()
