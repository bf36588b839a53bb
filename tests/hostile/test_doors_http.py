"""Case 5: the dispatcher's HTTP door (the real function under functions-framework) builds
only from folders inside its allowed root, refuses browsers from other sites and the
content types they can send without a preflight, and refuses YAML with no source_root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.core.handlers import Runtime
from shared.messages import TOPIC_REQUESTS, TOPIC_TASKS
from tests.e2e.dispatcher_runtime import fresh_dispatcher_runtime
from tests.hostile.doors_support import SERVICE_ARCHITECTURE, door_client

TOKEN = "hostile-http-token-5d1f"


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    root = tmp_path / "checkouts"
    (root / "shop" / "svc").mkdir(parents=True)
    (root / "shop" / "svc" / "main.py").write_text("print('svc')\n")
    return root


@pytest.fixture
def rt(tmp_path: Path, allowed: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    monkeypatch.setenv("ARCHDEPLOY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("ARCHDEPLOY_HTTP_SOURCE_ROOT", str(allowed))
    monkeypatch.setenv("ARCHDEPLOY_HTTP_TOKEN", TOKEN)
    yield from fresh_dispatcher_runtime()


@pytest.fixture
def client(rt: Runtime) -> Any:
    return door_client("dispatch_http")


def _post(client: Any, query: str = "", content_type: str = "application/yaml", **headers: str):  # type: ignore[no-untyped-def]
    headers.setdefault("Authorization", f"Bearer {TOKEN}")
    path = f"/?{query}" if query else "/"
    return client.post(path, data=SERVICE_ARCHITECTURE, content_type=content_type, headers=headers)


def _nothing_started(rt: Runtime) -> None:
    assert rt.store.list_runs() == []
    published = [t for t, _, _ in rt.bus.published]  # type: ignore[attr-defined]
    assert TOPIC_TASKS not in published and TOPIC_REQUESTS not in published


def _refused(response: Any, status: int, field: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert "Traceback" not in response.get_data(as_text=True)
    (problem,) = body["problems"]
    assert problem["path"] == field and problem["fix"]
    return str(body["error"])


def test_a_source_root_outside_the_allowed_folder_is_refused(client: Any, rt: Runtime) -> None:
    error = _refused(_post(client, "source_root=/etc"), 403, "source_root")
    assert "outside the allowed" in error
    _nothing_started(rt)


def test_a_relative_source_root_that_climbs_out_is_refused(client: Any, rt: Runtime) -> None:
    error = _refused(_post(client, "source_root=../../etc"), 400, "source_root")
    assert "not an absolute path" in error
    _nothing_started(rt)


def test_dot_dot_inside_an_absolute_source_root_is_resolved_first(
    client: Any, rt: Runtime, allowed: Path
) -> None:
    _refused(_post(client, f"source_root={allowed}/shop/../../../../etc"), 403, "source_root")
    _nothing_started(rt)


def test_a_link_inside_the_allowed_folder_that_leads_out_is_refused(
    client: Any, rt: Runtime, allowed: Path
) -> None:
    (allowed / "etc").symlink_to("/etc")
    _refused(_post(client, f"source_root={allowed}/etc"), 403, "source_root")
    _nothing_started(rt)


def test_json_requests_are_held_to_the_same_folder(client: Any, rt: Runtime) -> None:
    body = {"architecture": SERVICE_ARCHITECTURE, "source_root": "/etc"}
    response = client.post("/", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    _refused(response, 403, "source_root")
    _nothing_started(rt)


def test_yaml_without_source_root_is_refused_with_a_clear_400(client: Any, rt: Runtime) -> None:
    error = _refused(_post(client), 400, "source_root")
    assert "no source_root" in error and "not absolute" not in error
    _nothing_started(rt)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_content_types_a_browser_sends_without_preflight_are_refused(
    client: Any, rt: Runtime, allowed: Path, content_type: str
) -> None:
    response = _post(client, f"source_root={allowed}/shop", content_type=content_type)
    _refused(response, 415, "Content-Type")
    _nothing_started(rt)


def test_a_foreign_origin_is_refused_even_with_the_token(
    client: Any, rt: Runtime, allowed: Path
) -> None:
    response = _post(client, f"source_root={allowed}/shop", Origin="https://evil.example")
    error = _refused(response, 403, "Origin")
    assert "evil.example" in error
    assert client.get("/", headers={"Origin": "https://evil.example"}).status_code == 403
    _nothing_started(rt)


def test_without_the_token_nothing_is_read(client: Any, rt: Runtime, allowed: Path) -> None:
    response = _post(client, f"source_root={allowed}/shop", Authorization="")
    _refused(response, 401, "Authorization")
    _nothing_started(rt)


@pytest.mark.parametrize("origin", [None, "http://localhost"], ids=["no-origin", "own-origin"])
def test_a_folder_inside_the_allowed_root_is_accepted(
    client: Any, rt: Runtime, allowed: Path, origin: str | None
) -> None:
    headers = {"Origin": origin} if origin else {}
    response = _post(client, f"source_root={allowed}/shop", **headers)

    assert response.status_code == 202, response.get_data(as_text=True)
    (run,) = rt.store.list_runs()
    assert run.source_root == f"{allowed}/shop" and run.error is None
