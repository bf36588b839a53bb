"""Services find their dependencies: each deploy gets `<NAME>_URL` for every service it
lists in `dependencies`, planned as a placeholder and filled in when it is released, from
the dependency's deploy (or unchanged) task; on the FakeDeployer, URLs are stable
(https://<name>.fake.run), so a changed dependency does not change its dependents."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from shared.architecture.model import Architecture
from shared.cli.plan_text import render_plan
from shared.core.dependency_urls import url_key
from shared.core.plan import plan_run
from shared.messages import Phase, RunStatus
from tests.builders import architecture, service
from tests.unit.test_incremental import System


def _env(plan: Any, name: str) -> dict[str, str]:
    (task,) = [t for t in plan.phase(Phase.DEPLOY) if t.service == name]
    return dict(task.spec.environment_vars)


def _deployed_env(system: System, name: str) -> dict[str, str]:
    """The environment of the latest deploy of `name`."""
    return dict([s for n, _, s in system.deployer.deploys if n == name][-1].environment_vars)


def _chain(**enrich_env: str) -> Architecture:
    return architecture(
        {
            "orders": [
                service("fraud-check", "director"),
                service("ingest", "fraud-check"),
                service("enrich", "ingest", "fraud-check", environment_vars=enrich_env),
            ]
        }
    )


def test_the_key_is_the_name_upper_cased_with_dashes_as_underscores() -> None:
    assert url_key("ingest") == "INGEST_URL"
    assert url_key("fraud-check") == "FRAUD_CHECK_URL"


def test_the_plan_holds_a_placeholder_per_dependency_and_none_for_the_director() -> None:
    plan = plan_run(_chain(), run_id="r-1")
    assert _env(plan, "enrich")["INGEST_URL"] == ""
    assert _env(plan, "enrich")["FRAUD_CHECK_URL"] == ""
    fraud = _env(plan, "fraud-check")
    assert "DIRECTOR_URL" not in fraud and fraud["SERVICE_DIRECTOR_URL"] == ""
    assert plan.notes == {}


def test_a_run_hands_each_service_its_dependencies_urls() -> None:
    system = System()
    arch = _chain()
    result = system.run(arch)

    assert result.status is RunStatus.SUCCEEDED
    enrich = _deployed_env(system, "enrich")
    assert enrich["INGEST_URL"] == "https://ingest.fake.run"
    assert enrich["FRAUD_CHECK_URL"] == "https://fraud-check.fake.run"
    assert enrich["SERVICE_DIRECTOR_URL"] == "https://director.fake.run"
    assert _deployed_env(system, "ingest")["FRAUD_CHECK_URL"] == "https://fraud-check.fake.run"
    spec = arch.dataflows["orders"].services["enrich"].deployment
    assert spec is not None and "INGEST_URL" not in spec.environment_vars  # caller's untouched


def test_a_key_the_user_set_wins() -> None:
    system = System()
    system.run(_chain(INGEST_URL="https://ingest.example"))

    enrich = _deployed_env(system, "enrich")
    assert enrich["INGEST_URL"] == "https://ingest.example"
    assert enrich["FRAUD_CHECK_URL"] == "https://fraud-check.fake.run"


def _split(**api: Any) -> Architecture:
    return architecture(
        {"backend": [service("api", **api)], "frontend": [service("web", "api")]},
        director=False,
    )


def test_a_dependency_outside_the_run_without_a_known_url_is_left_out_and_said_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plan = plan_run(_split(), run_id="r-1", dataflows=["frontend"])
    assert "API_URL" not in _env(plan, "web")
    (note,) = plan.notes["web"]
    assert "API_URL left out: api is not deployed in this run" in note

    text = render_plan(plan.tasks, director=False, as_json=False, notes=plan.notes)
    assert f"      ({note})" in text.splitlines()
    system = System()
    with caplog.at_level(logging.WARNING):
        assert system.run(_split(), dataflows=["frontend"]).status is RunStatus.SUCCEEDED
    assert "API_URL" not in _deployed_env(system, "web")
    assert "web: API_URL left out" in caplog.text


def test_a_dependency_outside_the_run_gets_its_declared_or_earlier_url() -> None:
    declared = plan_run(
        _split(service_url="https://api.example"), run_id="r", dataflows=["frontend"]
    )
    assert _env(declared, "web")["API_URL"] == "https://api.example"
    known = plan_run(_split(), run_id="r", dataflows=["frontend"], known_urls={"api": "https://k"})
    assert _env(known, "web")["API_URL"] == "https://k"

    system = System()
    system.run(_split(), dataflows=["backend"])
    system.run(_split(), dataflows=["frontend"])  # api's URL comes from the earlier run
    assert _deployed_env(system, "web")["API_URL"] == "https://api.fake.run"


def test_plan_shows_each_dependency_url_like_the_directors() -> None:
    plan = plan_run(_chain(), run_id="(plan)")
    lines = render_plan(plan.tasks, director=True, as_json=False).splitlines()
    start = lines.index("  enrich after ingest, fraud-check")
    shown = lines[start + 1 : start + 9]
    assert "      INGEST_URL=(ingest's URL, once deployed)" in shown
    assert "      FRAUD_CHECK_URL=(fraud-check's URL, once deployed)" in shown
    assert "      SERVICE_DIRECTOR_URL=(the director's URL, once deployed)" in shown


def test_a_changed_dependency_whose_url_is_stable_redeploys_only_itself() -> None:
    system = System()
    first = system.run(_chain())
    deploys = len(system.deployer.deploys)

    moved = _chain().model_dump()
    moved["dataflows"]["orders"]["services"]["ingest"]["deployment"]["source_path"] = "v2/ingest"
    second = system.run(Architecture.model_validate(moved))

    assert first.status is second.status is RunStatus.SUCCEEDED
    assert [n for n, _, _ in system.deployer.deploys[deploys:]] == ["ingest"]
    assert system.reused(second, Phase.DEPLOY) == {"fraud-check", "enrich"}
    assert _deployed_env(system, "enrich")["INGEST_URL"] == "https://ingest.fake.run"
    assert second.urls == first.urls
