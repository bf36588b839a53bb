"""GcpDeployer as a TrafficDeployer, through the real run_v2 client against the strict fake
Cloud Run: stage beside what serves, move traffic by REVISION targets, tags and their URLs,
refusals as BackendError, idempotent redelivery. Assertions are on what the client sent."""

from __future__ import annotations

import re
from typing import Any

import pytest
from google.api_core import exceptions as api
from google.cloud import run_v2

from shared.adapters.gcp.deployer import GcpDeployer
from shared.architecture.model import DeploymentSpec, HealthCheck
from shared.deployer import Staged, Target, TrafficDeployer
from shared.errors import BackendError
from tests.fakes_google.cloudrun_server import FakeCloudRun
from tests.fakes_google.fixtures import FAKE_PROJECT, FAKE_REGION, RUNTIME_ACCOUNT

SERVICE = f"projects/{FAKE_PROJECT}/locations/{FAKE_REGION}/services/ingest"
REPOSITORY = f"{FAKE_REGION}-docker.pkg.dev/{FAKE_PROJECT}/archdeploy/ingest"
IMAGE_V1 = f"{REPOSITORY}@sha256:" + "1" * 64
IMAGE_V2 = f"{REPOSITORY}@sha256:" + "2" * 64
IMAGE_V3 = f"{REPOSITORY}@sha256:" + "3" * 64
BY_REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
TAG_URL = re.compile(r"https://next---ingest-[0-9a-f]{10}-ew\.a\.run\.app")
_TARGET = Target(run_id="run-1", health_check=HealthCheck(port=8080, path="/healthz"))


def _spec(image: str) -> DeploymentSpec:
    return DeploymentSpec(image=image)


def _deploy(deployer: GcpDeployer, image: str) -> str:
    """Deploy `image` the ordinary way; the id of the revision that serves it."""
    deployer.deploy_service("ingest", "runner", _spec(image), target=_TARGET)
    deployed = deployer.deployed("ingest", target=_TARGET)
    assert deployed is not None
    return deployed.revision.rsplit("/", 1)[-1]


def _stage(deployer: GcpDeployer, image: str, tag: str = "next") -> Staged:
    return deployer.stage("ingest", "runner", _spec(image), tag=tag, target=_TARGET)


def _sent_traffic(fake: FakeCloudRun, method: str = "UpdateService") -> list[tuple[Any, ...]]:
    service = fake.calls(method)[-1].service
    return [(t.type_, t.revision, t.percent, t.tag) for t in service.traffic]


def test_the_deployer_implements_the_traffic_deployer_port(gcp_deployer: GcpDeployer) -> None:
    assert isinstance(gcp_deployer, TrafficDeployer)


def test_stage_leaves_traffic_on_the_old_revision_and_the_tag_url_reaches_the_new(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    # Given v1 serving all traffic (deployed with a LATEST target)
    old = _deploy(gcp_deployer, IMAGE_V1)

    # When v2 is staged as `next`
    staged = _stage(gcp_deployer, IMAGE_V2)

    # Then v1 still serves everything and the tag names v2's revision, by its own URL
    assert fake_cloudrun.serving(SERVICE) == {old: 100, staged.revision: 0}
    assert re.fullmatch(r"ingest-next-[0-9a-f]{8}", staged.revision)
    assert TAG_URL.fullmatch(staged.url) and not staged.created
    # And UpdateService named the revision and pinned traffic by REVISION, percents unchanged
    update = fake_cloudrun.calls("UpdateService")[-1].service
    assert update.template.revision == staged.revision
    assert update.template.containers[0].image == IMAGE_V2
    assert _sent_traffic(fake_cloudrun) == [
        (BY_REVISION, old, 100, ""),
        (BY_REVISION, staged.revision, 0, "next"),
    ]
    traffic = gcp_deployer.traffic("ingest", target=_TARGET)
    assert traffic is not None
    assert traffic.percents == {old: 100} and traffic.tags == {"next": staged.revision}
    assert traffic.tag_urls == {"next": staged.url}
    assert traffic.url == fake_cloudrun.services[SERVICE].uri != staged.url


def test_set_traffic_moves_everything_then_a_canary_and_keeps_the_tag(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    old = _deploy(gcp_deployer, IMAGE_V1)
    new = _stage(gcp_deployer, IMAGE_V2).revision

    everything = gcp_deployer.set_traffic("ingest", {new: 100}, target=_TARGET)
    assert everything.percents == {new: 100} and everything.tags == {"next": new}
    assert _sent_traffic(fake_cloudrun) == [
        (BY_REVISION, new, 100, ""),
        (BY_REVISION, new, 0, "next"),
    ]

    canary = gcp_deployer.set_traffic("ingest", {new: 10, old: 90}, target=_TARGET)
    assert canary.percents == {new: 10, old: 90} and canary.tags == {"next": new}
    assert fake_cloudrun.serving(SERVICE) == {old: 90, new: 10}
    # A traffic change makes no revision
    assert len(fake_cloudrun.revisions[SERVICE]) == 2


def test_setting_the_traffic_it_has_already_sends_nothing(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    old = _deploy(gcp_deployer, IMAGE_V1)
    updates = len(fake_cloudrun.calls("UpdateService"))

    assert gcp_deployer.set_traffic("ingest", {old: 100}, target=_TARGET).percents == {old: 100}
    assert len(fake_cloudrun.calls("UpdateService")) == updates


@pytest.mark.parametrize(
    ("percents", "answer"),
    [
        ({"ingest-00042-zzz": 100}, "Revision 'ingest-00042-zzz' referenced in traffic not found"),
        ({"OLD": 90}, "add up to 90, not 100"),
    ],
    ids=["unknown-revision", "sum-not-100"],
)
def test_refused_traffic_is_a_backend_error_naming_service_sent_and_answer(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun, percents: dict[str, int], answer: str
) -> None:
    old = _deploy(gcp_deployer, IMAGE_V1)
    percents = {old if r == "OLD" else r: p for r, p in percents.items()}

    with pytest.raises(BackendError) as raised:
        gcp_deployer.set_traffic("ingest", percents, target=_TARGET)

    message = str(raised.value)
    sent = ", ".join(f"{r} {p}%" for r, p in percents.items())
    assert message.startswith(f"setting the traffic of ingest to {sent}: UpdateService failed")
    assert "INVALID_ARGUMENT: " in message and answer in message and not raised.value.retryable
    assert fake_cloudrun.serving(SERVICE) == {old: 100}


def test_set_traffic_of_a_missing_service_names_it(gcp_deployer: GcpDeployer) -> None:
    with pytest.raises(BackendError, match="ingest does not exist"):
        gcp_deployer.set_traffic("ingest", {"ingest-a": 100}, target=_TARGET)
    assert gcp_deployer.traffic("ingest", target=_TARGET) is None


def test_a_redelivered_stage_returns_the_same_revision_without_another_update(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    _deploy(gcp_deployer, IMAGE_V1)
    first = _stage(gcp_deployer, IMAGE_V2)
    updates = len(fake_cloudrun.calls("UpdateService"))

    again = _stage(gcp_deployer, IMAGE_V2)

    assert again == first
    assert len(fake_cloudrun.calls("UpdateService")) == updates
    assert len(fake_cloudrun.revisions[SERVICE]) == 2


def test_staging_another_configuration_under_the_tag_moves_it_to_a_new_revision(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    old = _deploy(gcp_deployer, IMAGE_V1)
    first = _stage(gcp_deployer, IMAGE_V2)
    second = _stage(gcp_deployer, IMAGE_V3)

    assert second.revision != first.revision and second.url == first.url
    traffic = gcp_deployer.traffic("ingest", target=_TARGET)
    assert traffic is not None
    assert traffic.percents == {old: 100} and traffic.tags == {"next": second.revision}
    # The first staged revision is kept: traffic can still be sent to it
    gcp_deployer.set_traffic("ingest", {first.revision: 100}, target=_TARGET)
    assert fake_cloudrun.serving(SERVICE)[first.revision] == 100


def test_staging_a_new_service_creates_it_with_all_traffic_on_its_first_revision(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    staged = _stage(gcp_deployer, IMAGE_V1)

    assert staged.created and TAG_URL.fullmatch(staged.url)
    assert _sent_traffic(fake_cloudrun, "CreateService") == [
        (BY_REVISION, staged.revision, 100, ""),
        (BY_REVISION, staged.revision, 0, "next"),
    ]
    # And a redelivery still knows it created the service, and changes nothing
    assert _stage(gcp_deployer, IMAGE_V1) == staged
    assert fake_cloudrun.calls("UpdateService") == []
    # Once traffic was set, the service is no longer the stage's own creation
    gcp_deployer.set_traffic("ingest", {staged.revision: 100}, target=_TARGET)
    gcp_deployer.untag("ingest", "next", target=_TARGET)
    assert not _stage(gcp_deployer, IMAGE_V1).created


def test_untag_drops_the_tag_and_is_idempotent(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    old = _deploy(gcp_deployer, IMAGE_V1)
    _stage(gcp_deployer, IMAGE_V2)

    gcp_deployer.untag("ingest", "next", target=_TARGET)
    updates = len(fake_cloudrun.calls("UpdateService"))
    gcp_deployer.untag("ingest", "next", target=_TARGET)
    gcp_deployer.untag("missing", "next", target=_TARGET)

    traffic = gcp_deployer.traffic("ingest", target=_TARGET)
    assert traffic is not None and traffic.tags == {} and traffic.percents == {old: 100}
    assert _sent_traffic(fake_cloudrun) == [(BY_REVISION, old, 100, "")]
    assert len(fake_cloudrun.calls("UpdateService")) == updates


def test_a_staged_revision_that_fails_leaves_traffic_and_says_why(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    old = _deploy(gcp_deployer, IMAGE_V1)
    fake_cloudrun.behave("ingest", readiness_failure="container failed to start")

    with pytest.raises(BackendError) as raised:
        _stage(gcp_deployer, IMAGE_V2)

    assert str(raised.value).startswith(
        "staging ingest as next: UpdateService did not become ready"
    )
    assert "container failed to start" in str(raised.value)
    assert fake_cloudrun.serving(SERVICE) == {old: 100}


def test_transient_errors_are_retried_and_persistent_ones_are_retryable(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    old = _deploy(gcp_deployer, IMAGE_V1)
    fake_cloudrun.behave("ingest", transient_errors=2)
    staged = _stage(gcp_deployer, IMAGE_V2)  # two UNAVAILABLE answers, then accepted
    assert fake_cloudrun.serving(SERVICE) == {old: 100, staged.revision: 0}

    fake_cloudrun.behave("ingest", transient_errors=100)
    with pytest.raises(BackendError) as raised:
        gcp_deployer.set_traffic("ingest", {staged.revision: 100}, target=_TARGET)
    assert raised.value.retryable and "UNAVAILABLE" in str(raised.value)


def test_a_bad_tag_is_refused_before_any_call(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    with pytest.raises(BackendError, match="'Next' is not a valid tag"):
        _stage(gcp_deployer, IMAGE_V1, tag="Next")
    assert fake_cloudrun.calls("CreateService") == fake_cloudrun.calls("UpdateService") == []


def test_rollback_pins_by_revision_and_keeps_tags(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    v1 = _deploy(gcp_deployer, IMAGE_V1)
    staged = _stage(gcp_deployer, IMAGE_V2)
    gcp_deployer.set_traffic("ingest", {staged.revision: 100}, target=_TARGET)

    gcp_deployer.rollback("ingest", v1, target=_TARGET)

    assert _sent_traffic(fake_cloudrun) == [
        (BY_REVISION, v1, 100, ""),
        (BY_REVISION, staged.revision, 0, "next"),
    ]
    assert fake_cloudrun.serving(SERVICE) == {v1: 100, staged.revision: 0}


class _StaleFirstRead:
    """The real Cloud Run client, whose first GetService has not yet seen a create made
    meanwhile by a duplicate delivery (as Cloud Run's answer can lag)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._stale = True

    def get_service(self, **kwargs: Any) -> Any:
        if self._stale:
            self._stale = False
            raise api.NotFound("Resource 'ingest' was not found")
        return self._client.get_service(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_a_stage_racing_a_duplicate_that_created_the_service_stages_beside_it(
    gcp_deployer: GcpDeployer, cloudrun_client: Any, fake_cloudrun: FakeCloudRun
) -> None:
    # Given a duplicate delivery created the service after this stage looked for it
    first = _stage(gcp_deployer, IMAGE_V1)
    racing = GcpDeployer(
        FAKE_PROJECT,
        FAKE_REGION,
        source_bucket="unused",
        run_client=_StaleFirstRead(cloudrun_client),
        retry_base_delay=0.01,
        poll_interval=0.01,
        default_service_account=RUNTIME_ACCOUNT,
    )

    # When this one stages the same, CreateService answers ALREADY_EXISTS
    again = _stage(racing, IMAGE_V1)

    # Then it finds its revision staged already: the same answer, one service, one revision
    assert again == first and first.created
    assert len(fake_cloudrun.calls("CreateService")) == 2
    assert fake_cloudrun.calls("UpdateService") == []
    assert len(fake_cloudrun.revisions[SERVICE]) == 1


def test_traffic_resolves_a_latest_target_to_the_latest_ready_revision(
    gcp_deployer: GcpDeployer, fake_cloudrun: FakeCloudRun
) -> None:
    # Given an ordinary deploy, whose traffic is one LATEST target
    v1 = _deploy(gcp_deployer, IMAGE_V1)
    assert [t.type_ for t in fake_cloudrun.services[SERVICE].traffic] == [
        run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
    ]

    traffic = gcp_deployer.traffic("ingest", target=_TARGET)

    # Then it reads as the concrete revision, and staging pins exactly that one
    assert traffic is not None and traffic.percents == {v1: 100} and traffic.tags == {}
    _stage(gcp_deployer, IMAGE_V2)
    assert _sent_traffic(fake_cloudrun)[0] == (BY_REVISION, v1, 100, "")
