from __future__ import annotations

import pytest

from shared.core.plan import enrich_environment, plan_run
from shared.errors import UsageError
from shared.messages import Phase, TaskStatus
from tests.builders import architecture, service


def _names(plan, phase):  # type: ignore[no-untyped-def]
    return sorted(t.service for t in plan.phase(phase))


def test_every_service_with_a_deployment_is_built_across_all_dataflows_plus_the_director() -> None:
    arch = architecture()
    plan = plan_run(arch, run_id="r-1")
    assert _names(plan, Phase.BUILD) == ["director", "enrich", "ingest", "notify"]
    assert _names(plan, Phase.DIRECTOR) == ["director"]
    assert _names(plan, Phase.DEPLOY) == ["enrich", "ingest", "notify"]
    assert all(t.status is TaskStatus.WAITING for t in plan.tasks)


def test_task_ids_are_deterministic() -> None:
    plan = plan_run(architecture(), run_id="r-abc")
    assert "r-abc:build:ingest" in {t.task_id for t in plan.tasks}
    assert "r-abc:deploy:enrich" in {t.task_id for t in plan.tasks}


def test_a_dataflow_filter_keeps_only_its_services() -> None:
    plan = plan_run(architecture(), run_id="r-1", dataflows=["notifications"])
    assert _names(plan, Phase.BUILD) == ["director", "notify"]
    assert _names(plan, Phase.DEPLOY) == ["notify"]
    assert plan.dataflows == ["notifications"]


def test_an_unknown_dataflow_is_a_usage_error_with_a_suggestion() -> None:
    with pytest.raises(UsageError, match="did you mean `orders`"):
        plan_run(architecture(), run_id="r-1", dataflows=["ordres"])


def test_a_given_director_url_means_the_director_is_neither_built_nor_deployed() -> None:
    plan = plan_run(architecture(), run_id="r-1", director_url="https://dir.example")
    assert "director" not in _names(plan, Phase.BUILD)
    assert not plan.phase(Phase.DIRECTOR)


def test_services_without_a_deployment_are_left_out() -> None:
    arch = architecture({"f": [service("a"), {"name": "b", "service_account": "b-sa"}]})
    plan = plan_run(arch, run_id="r-1")
    assert _names(plan, Phase.DEPLOY) == ["a"]


def test_dependencies_inside_the_deploy_set_are_kept_and_others_dropped() -> None:
    plan = plan_run(architecture(), run_id="r-1")
    deps = {t.service: t.depends_on for t in plan.phase(Phase.DEPLOY)}
    # `director` is deployed in its own phase, before every deploy: not a deploy dependency.
    assert deps == {"ingest": [], "enrich": ["ingest"], "notify": []}


def test_deploy_env_is_enriched_and_user_keys_are_kept() -> None:
    arch = architecture({"f": [service("a", environment_vars={"LOG_LEVEL": "info"})]})
    (deploy,) = plan_run(arch, run_id="r-1").phase(Phase.DEPLOY)
    assert deploy.spec is not None
    assert deploy.spec.environment_vars == {
        "LOG_LEVEL": "info",
        "SERVICE_DIRECTOR_URL": "",
        "PROJECT_ID": "acme-dev",
        "SERVICE_NAME": "a",
        "DATAFLOW_NAME": "f",
    }


def test_enrichment_never_mutates_the_callers_spec() -> None:
    arch = architecture({"f": [service("a", environment_vars={"K": "v"})]})
    spec = arch.dataflows["f"].services["a"].deployment
    assert spec is not None
    before = spec.model_dump()
    enriched = enrich_environment(
        spec, project_id="p", director_url="http://d", service="a", dataflow="f"
    )
    plan_run(arch, run_id="r-1", director_url="http://d")
    assert spec.model_dump() == before
    assert enriched.environment_vars["SERVICE_DIRECTOR_URL"] == "http://d"
    assert spec.environment_vars == {"K": "v"}


def test_relative_sources_resolve_against_the_source_root(tmp_path) -> None:  # type: ignore[no-untyped-def]
    arch = architecture({"f": [service("a", config_templates={"conf/app.ini": "app.ini"})]})
    (build,) = plan_run(arch, run_id="r-1", source_root=str(tmp_path)).phase(Phase.BUILD)[1:]
    assert build.spec is not None
    assert build.spec.source_path == str(tmp_path / "services" / "a")
    assert build.spec.config_templates == {str(tmp_path / "conf" / "app.ini"): "app.ini"}


def test_prebuilt_images_start_succeeded_and_build_only_plans_no_deploys() -> None:
    plan = plan_run(architecture(), run_id="r-1", images={"ingest": "img@sha256:1"})
    ingest = next(t for t in plan.phase(Phase.BUILD) if t.service == "ingest")
    assert ingest.status is TaskStatus.SUCCEEDED and ingest.image == "img@sha256:1"
    only = plan_run(architecture(), run_id="r-2", build_only=True)
    assert not only.phase(Phase.DEPLOY) and not only.phase(Phase.DIRECTOR)
    assert len(only.phase(Phase.BUILD)) == 4
