"""The strict fake Cloud Run refuses the revisions, tags and traffic Cloud Run refuses, through
the real `run_v2` client. Each rule's source is quoted in tests/fakes_google/run_rules.py:
knative's TrafficTarget (percents 0..100 summing to 100; latestRevision with no name), the v2
`Service.traffic` doc (revisions "belonging to the Service"), the tag as the start of a DNS
label and its observed 46-character limit with the service name, gcloud's `--revision-suffix`
("Revision names always start with the service name") and the observed ALREADY_EXISTS for a
reused revision name."""

from __future__ import annotations

import re
from typing import Any

import pytest
from google.api_core import exceptions as api
from google.cloud import run_v2

from tests.fakes_google.cloudrun_server import FakeCloudRun
from tests.fakes_google.fixtures import FAKE_PROJECT, FAKE_REGION, RUNTIME_ACCOUNT

PARENT = f"projects/{FAKE_PROJECT}/locations/{FAKE_REGION}"
NAME = f"{PARENT}/services/svc"
IMAGE = f"{FAKE_REGION}-docker.pkg.dev/{FAKE_PROJECT}/archdeploy/svc@sha256:" + "d" * 64
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
BY_REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION


def _template(revision: str = "", version: str = "1") -> Any:
    container = run_v2.Container(image=IMAGE, env=[run_v2.EnvVar(name="V", value=version)])
    return run_v2.RevisionTemplate(
        containers=[container], service_account=RUNTIME_ACCOUNT, revision=revision
    )


def _pin(revision: str, percent: int, tag: str = "") -> Any:
    return run_v2.TrafficTarget(type_=BY_REVISION, revision=revision, percent=percent, tag=tag)


def _create(client: Any, revision: str = "svc-one") -> Any:
    service = run_v2.Service(template=_template(revision))
    return client.create_service(parent=PARENT, service=service, service_id="svc").result()


def _update(client: Any, traffic: list[Any], template: Any = None) -> Any:
    service = client.get_service(name=NAME)
    if template is not None:
        service.template = template
    service.traffic = traffic
    return client.update_service(service=service).result()


def _two_revisions(client: Any) -> Any:
    """svc-one serving 100%, then svc-two staged beside it with tag `next`."""
    _create(client)
    return _update(
        client, [_pin("svc-one", 100), _pin("svc-two", 0, "next")], _template("svc-two", "2")
    )


@pytest.mark.parametrize(
    ("traffic", "fragment"),
    [
        ([_pin("svc-one", 90)], "add up to 90, not 100"),
        ([_pin("svc-one", 60), _pin("svc-one", 60)], "add up to 120, not 100"),
        ([_pin("svc-one", 100), _pin("svc-gone", 0, "old")], "Revision 'svc-gone'"),
        ([_pin("svc-one", 100), _pin("", 0, "blank")], "Revision '' referenced"),
        ([run_v2.TrafficTarget(type_=LATEST, revision="svc-one", percent=100)], "LATEST"),
        ([_pin("svc-one", 100, "Blue")], "lowercase letters"),
        ([_pin("svc-one", 100, "1st")], "starting with a letter"),
        ([_pin("svc-one", 100, "blue-")], "not ending with a hyphen"),
        ([_pin("svc-one", 100, "b" * 44)], "cannot exceed 46 characters"),  # 44 + "svc"
        ([_pin("svc-one", 100, "a"), _pin("svc-one", 0, "a")], "'a' is used twice"),
    ],
    ids=[
        "sum-below-100",
        "sum-above-100",
        "unknown-revision",
        "revision-target-without-revision",
        "latest-naming-a-revision",
        "tag-uppercase",
        "tag-starting-with-digit",
        "tag-ending-with-hyphen",
        "tag-too-long-with-service-name",
        "duplicate-tag",
    ],
)
def test_the_fake_refuses_traffic_cloud_run_refuses(
    cloudrun_client: Any, fake_cloudrun: FakeCloudRun, traffic: list[Any], fragment: str
) -> None:
    _create(cloudrun_client)

    with pytest.raises(api.InvalidArgument) as refused:
        _update(cloudrun_client, traffic)

    assert fragment in refused.value.message
    assert fake_cloudrun.serving(NAME) == {"svc-one": 100}  # nothing moved


@pytest.mark.parametrize(
    ("revision", "fragment"),
    [
        ("other-v1", "must begin with the service name: 'svc-'"),
        ("svc", "must begin with the service name"),
        ("svc-V1", "lowercase letters"),
        ("svc-v1-", "not ending with a hyphen"),
        ("svc-" + "x" * 60, "at most 63 characters"),
    ],
    ids=["other-prefix", "no-suffix", "uppercase", "trailing-hyphen", "too-long"],
)
def test_the_fake_refuses_revision_names_cloud_run_refuses(
    cloudrun_client: Any, revision: str, fragment: str
) -> None:
    with pytest.raises(api.InvalidArgument) as refused:
        _create(cloudrun_client, revision)
    assert "service.template.revision" in refused.value.message
    assert fragment in refused.value.message


def test_a_revision_name_taken_by_another_configuration_is_already_exists(
    cloudrun_client: Any, fake_cloudrun: FakeCloudRun
) -> None:
    _two_revisions(cloudrun_client)

    with pytest.raises(api.AlreadyExists, match="with different configuration already exists"):
        _update(cloudrun_client, [_pin("svc-one", 100)], _template("svc-two", "3"))
    assert [r.id for r in fake_cloudrun.revisions[NAME]] == ["svc-one", "svc-two"]


def test_the_same_named_template_again_is_the_same_revision(
    cloudrun_client: Any, fake_cloudrun: FakeCloudRun
) -> None:
    _two_revisions(cloudrun_client)

    again = _update(
        cloudrun_client,
        [_pin("svc-one", 100), _pin("svc-two", 0, "next")],
        _template("svc-two", "2"),
    )

    assert [r.id for r in fake_cloudrun.revisions[NAME]] == ["svc-one", "svc-two"]
    assert again.latest_ready_revision == f"{NAME}/revisions/svc-two"


def test_traffic_may_name_the_revision_the_update_creates_and_tags_get_their_own_url(
    cloudrun_client: Any, fake_cloudrun: FakeCloudRun
) -> None:
    service = _two_revisions(cloudrun_client)

    statuses = {(s.revision, s.percent, s.tag): s.uri for s in service.traffic_statuses}
    assert set(statuses) == {("svc-one", 100, ""), ("svc-two", 0, "next")}
    host = service.uri.removeprefix("https://")
    assert statuses[("svc-two", 0, "next")] == f"https://next---{host}"
    assert re.fullmatch(
        r"https://next---svc-[0-9a-f]{10}-ew\.a\.run\.app", statuses[("svc-two", 0, "next")]
    )
    assert statuses[("svc-one", 100, "")] == ""


def test_revisions_are_kept_so_traffic_moves_forward_and_back(
    cloudrun_client: Any, fake_cloudrun: FakeCloudRun
) -> None:
    _two_revisions(cloudrun_client)

    _update(cloudrun_client, [_pin("svc-one", 90), _pin("svc-two", 10, "next")])
    assert fake_cloudrun.serving(NAME) == {"svc-one": 90, "svc-two": 10}
    _update(cloudrun_client, [_pin("svc-one", 100)])
    assert fake_cloudrun.serving(NAME) == {"svc-one": 100}
    assert len(fake_cloudrun.revisions[NAME]) == 2  # moving traffic makes no revision


def test_a_latest_target_and_a_revision_target_for_the_same_revision_are_both_kept(
    cloudrun_client: Any,
) -> None:
    _two_revisions(cloudrun_client)  # svc-two is the latest ready revision

    service = _update(
        cloudrun_client,
        [run_v2.TrafficTarget(type_=LATEST, percent=10), _pin("svc-two", 20), _pin("svc-one", 70)],
    )

    resolved = [(s.type_, s.revision, s.percent) for s in service.traffic_statuses]
    assert resolved == [
        (LATEST, "svc-two", 10),
        (BY_REVISION, "svc-two", 20),
        (BY_REVISION, "svc-one", 70),
    ]
