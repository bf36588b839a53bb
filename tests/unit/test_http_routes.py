"""The HTTP door's routes: a werkzeug map, each path to one handler."""

from __future__ import annotations

import json

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from shared.core.dispatcher import dispatch_request
from shared.core.runtime import Runtime
from shared.doors import http_api
from shared.messages import DeployRequest
from tests.builders import architecture, service
from tests.fakes import FakeBus, FakeRunStore


@pytest.fixture
def rt() -> Runtime:
    return Runtime(store=FakeRunStore(), bus=FakeBus())


def call(rt: Runtime, method: str, path: str) -> tuple[int, dict[str, object], dict[str, str]]:
    request = Request(EnvironBuilder(method=method, path=path).get_environ())
    body, status, headers = http_api.handle(request, rt)
    return status, json.loads(body), headers


def test_each_route_reaches_its_handler(rt: Runtime) -> None:
    arch = architecture({"flow": [service("one")]}, director=False)
    run = dispatch_request(DeployRequest(architecture=arch.model_dump_json()), rt)
    assert call(rt, "GET", "/")[1]["runs"] == call(rt, "GET", "/runs/")[1]["runs"]
    assert call(rt, "GET", f"/runs/{run.run_id}")[1]["run_id"] == run.run_id
    assert call(rt, "GET", f"/?run_id={run.run_id}")[1]["run_id"] == run.run_id
    status, body, _ = call(rt, "POST", f"/runs/{run.run_id}/cancel")
    assert status == 202 and body["cancelled_by"] == "http"


def test_a_path_with_no_route_is_a_404_naming_the_routes(rt: Runtime) -> None:
    status, body, _ = call(rt, "GET", "/nowhere")
    assert status == 404
    assert "POST /runs/RUN_ID/cancel" in body["problems"][0]["fix"]  # type: ignore[index]


def test_a_method_a_route_does_not_take_is_a_405_with_allow(rt: Runtime) -> None:
    status, _, headers = call(rt, "POST", "/runs/r-1")
    assert (status, headers["Allow"]) == (405, "GET")
    status, _, headers = call(rt, "PUT", "/")
    assert (status, headers["Allow"]) == (405, "GET, POST")
