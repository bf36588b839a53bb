"""The local front end's routing decisions and the traffic rules, without processes: the
weighted round-robin is deterministic, set_traffic refuses what Cloud Run refuses, status
lines name percents and tags, and pinning another local_port is a change."""

from __future__ import annotations

import os
from collections import Counter
from itertools import pairwise
from typing import Any

import pytest

from shared.adapters.local.processes import start_time
from shared.adapters.local.routing import Backend, Route, parse_routes
from shared.adapters.local.traffic import TrafficState, check_tag, describe
from shared.architecture.model import DeploymentSpec
from shared.deployer import Traffic, config_fingerprint
from shared.errors import BackendError


def _route(*percents: int) -> Route:
    backends = tuple(
        Backend(f"r{i}", f"http://127.0.0.1:{9000 + i}", p) for i, p in enumerate(percents)
    )
    return Route(key="p/e/web", service="web", tag="", backends=backends)


def _picks(route: Route, n: int) -> list[str]:
    picked = [route.pick() for _ in range(n)]
    return [b.revision for b in picked if b is not None]


@pytest.mark.parametrize(
    "percents",
    [(90, 10), (75, 25), (50, 30, 20), (1, 99), (100,), (33, 33, 34)],
    ids=["90-10", "75-25", "50-30-20", "1-99", "100", "33-33-34"],
)
def test_every_100_requests_give_each_revision_exactly_its_percent(
    percents: tuple[int, ...],
) -> None:
    counts = Counter(_picks(_route(*percents), 400))

    assert counts == Counter({f"r{i}": 4 * p for i, p in enumerate(percents)})


def test_a_small_share_is_spread_out_not_sent_in_a_burst() -> None:
    picks = _picks(_route(90, 10), 100)

    assert all(a != "r1" or b != "r1" for a, b in pairwise(picks))
    assert picks.count("r1") == 10


def test_a_revision_at_zero_percent_gets_nothing_and_no_backend_means_no_pick() -> None:
    assert set(_picks(_route(0, 100), 50)) == {"r1"}
    assert _route().pick() is None


def test_routes_of_the_shape_before_splits_are_one_revision_at_100() -> None:
    routes = parse_routes(
        {
            "routes": {
                "5000": {"key": "k", "service": "web", "revision": "web-1", "upstream": "http://u"}
            }
        }
    )

    assert routes[5000].backends == (Backend("web-1", "http://u", 100),)
    assert routes[5000].tag == ""


def _alive_record(revision: str) -> dict[str, Any]:
    # This test's own process stands in for a revision's: alive() checks pid + start time.
    return {"revision": revision, "pid": os.getpid(), "proc_start": start_time(os.getpid())}


def _state() -> TrafficState:
    state = TrafficState()
    state.serve(_alive_record("web-a"))
    state.stage(_alive_record("web-b"), "canary")
    return state


@pytest.mark.parametrize(
    ("percents", "refusal"),
    [
        ({"web-a": 60, "web-b": 30}, "sum to 90: they must sum to 100"),
        ({"web-a": 50, "web-zzz": 50}, "no revision 'web-zzz' (revisions: web-a, web-b)"),
        ({"web-a": 101, "web-b": -1}, "web-a gets 101: give 0 to 100"),
        ({"web-a": True, "web-b": 99}, "web-a gets True: give 0 to 100"),
    ],
    ids=["sum", "unknown", "range", "bool"],
)
def test_set_traffic_refuses_naming_the_problem(percents: dict[str, int], refusal: str) -> None:
    state = _state()

    with pytest.raises(BackendError, match="setting the traffic of web: ") as caught:
        state.split("web", percents)

    assert refusal in str(caught.value)
    assert state.percents == {"web-a": 100}  # unchanged


def test_a_stopped_revision_may_not_get_traffic() -> None:
    state = _state()
    state.records["web-b"] = {"revision": "web-b", "pid": None}

    with pytest.raises(BackendError, match="revision web-b is not running: stage it again"):
        state.split("web", {"web-a": 50, "web-b": 50})


def test_a_split_drops_zero_shares_and_prune_keeps_only_served_or_tagged() -> None:
    state = _state()
    state.split("web", {"web-a": 0, "web-b": 100})
    assert state.percents == {"web-b": 100}
    state.prune()
    assert set(state.records) == {"web-b"}  # web-a: no traffic, no tag
    state.tags.pop("canary")
    state.prune()
    assert set(state.records) == {"web-b"}  # still serving


def test_staging_a_service_that_serves_nothing_gives_it_all_traffic() -> None:
    state = TrafficState()
    state.stage(_alive_record("web-a"), "first")

    assert state.percents == {"web-a": 100} and state.created == "web-a"


@pytest.mark.parametrize(
    "tag",
    ["Canary", "1st", "a_b", "", "x" * 47],
    ids=["upper", "digit", "underscore", "empty", "long"],
)
def test_a_tag_must_be_a_dns_label_prefix(tag: str) -> None:
    with pytest.raises(BackendError, match="is not a tag: use lowercase letters"):
        check_tag("web", tag)


def test_status_lines_give_each_revision_its_percent_and_tag_url() -> None:
    traffic = Traffic(
        url="http://127.0.0.1:5000",
        percents={"web-a": 90, "web-b": 10},
        tags={"canary": "web-b", "old": "web-c"},
        tag_urls={"canary": "http://127.0.0.1:5001", "old": "http://127.0.0.1:5002"},
    )

    lines = describe(traffic)

    assert [line.split()[:2] for line in lines] == [
        ["web-a", "90%"],
        ["web-b", "10%"],
        ["web-c", "0%"],
    ]
    assert lines[1].endswith("tag canary http://127.0.0.1:5001")
    assert lines[2].endswith("tag old http://127.0.0.1:5002")


def test_pinning_another_local_port_is_a_change_and_no_pin_keeps_the_old_fingerprint() -> None:
    plain = DeploymentSpec(image="img@sha256:1")

    assert config_fingerprint(
        "", plain.model_copy(update={"local_port": 8081})
    ) != config_fingerprint("", plain.model_copy(update={"local_port": 8082}))
    assert config_fingerprint("", plain) != config_fingerprint(
        "", plain.model_copy(update={"local_port": 8081})
    )
