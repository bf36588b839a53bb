from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.architecture.loading import (
    MAX_ARCHITECTURE_BYTES,
    LoadedArchitecture,
    architecture_json_schema,
    load_architecture,
    parse_architecture,
)
from shared.errors import ArchitectureError, Problem

DATA = Path(__file__).parent.parent / "data" / "architectures"
EXAMPLE = DATA / "schema_example.yaml"
FLOW = "dataflows.orders.services"


def doc(text: str) -> str:
    """A YAML document written indented in a test; its first line is line 1."""
    return textwrap.dedent(text).lstrip("\n")


def problems(text: str | bytes, **options: Any) -> list[Problem]:
    with pytest.raises(ArchitectureError) as raised:
        parse_architecture(text, **options)
    return raised.value.problems


def at(found: list[Problem], path: str) -> Problem:
    matching = [problem for problem in found if problem.path == path]
    assert len(matching) == 1, f"expected one problem at {path!r}, got {found}"
    return matching[0]


def service(deployment: str = "", extra: str = "", name: str = "ingest") -> str:
    """One service `ingest` on line 5; `extra` lines from line 6, `deployment` lines from 7."""
    body = textwrap.indent(textwrap.dedent(deployment).strip("\n"), " " * 10)
    more = textwrap.indent(textwrap.dedent(extra).strip("\n"), " " * 8)
    return (
        "project_id: acme-dev\n"
        "dataflows:\n"
        "  orders:\n"
        "    services:\n"
        f"      {name}:\n"
        + (f"{more}\n" if extra else "")
        + ("        deployment:\n" + body + "\n" if deployment else "")
    )


# --- the documented format loads unchanged ------------------------------------------------


def test_the_schema_example_loads_unchanged_with_its_legacy_root_topics() -> None:
    loaded = load_architecture(EXAMPLE)

    architecture = loaded.architecture
    assert loaded.warnings == []
    assert loaded.file == str(EXAMPLE)
    assert loaded.base_dir == EXAMPLE.absolute().parent
    assert loaded.text == EXAMPLE.read_text()
    assert architecture.project_id == "acme-dev"
    assert architecture.director is not None and architecture.director.name == "director"
    flow = architecture.dataflows["orders"]
    assert list(flow.services) == ["ingest", "enrich"]
    assert flow.services["enrich"].dependencies == ["ingest"]
    assert flow.resources.topics[0].producer_service is not None
    assert flow.lifecycle is not None and flow.lifecycle.strategy == "ephemeral"
    assert [topic["name"] for topic in architecture.topics] == ["legacy-topic"]
    assert architecture.subscriptions[0]["topic"] == "legacy-topic"
    assert load_architecture(EXAMPLE, strict=True).architecture == architecture


def test_the_schema_example_as_json_gives_the_same_architecture() -> None:
    as_json = json.dumps(yaml.safe_load(EXAMPLE.read_text()), indent=2)

    assert parse_architecture(as_json).architecture == load_architecture(EXAMPLE).architecture


def test_parsing_text_without_a_path_names_it_inline_and_has_no_base_dir() -> None:
    loaded = parse_architecture(EXAMPLE.read_bytes())

    assert isinstance(loaded, LoadedArchitecture)
    assert (loaded.file, loaded.base_dir) == ("<inline>", None)


def test_a_byte_order_mark_is_accepted() -> None:
    loaded = parse_architecture(b"\xef\xbb\xbfproject_id: acme-dev\n")

    assert loaded.architecture.project_id == "acme-dev"


def test_json_input_loads_and_its_problems_carry_lines() -> None:
    document = {
        "project_id": "acme-dev",
        "dataflows": {"orders": {"services": {"ingest": {"deployment": {"cpu": ["1"]}}}}},
    }
    text = json.dumps(document, indent=2)  # "cpu" is on line 8

    problem = at(problems(text), f"{FLOW}.ingest.deployment.cpu")

    assert problem.line == 8
    assert "must be text, not a list" in problem.message
    assert parse_architecture(json.dumps({"project_id": "acme-dev"})).architecture.region == ""


def test_json_with_escaped_characters_beyond_the_basic_plane_loads() -> None:
    document = {"project_id": "acme-dev", "labels": {"team": "orders \U0001f600", "raw": "\\ud83d"}}

    labels = parse_architecture(json.dumps(document)).architecture.labels

    assert labels == document["labels"]


def test_scalars_where_text_is_expected_keep_the_text_written_as_go_reads_them() -> None:
    text = service(
        """
        cpu: 1
        memory: 1Gi
        environment_vars: {WORKERS: 4, DEBUG: yes, RATIO: 0.50, EMPTY: , ON: 1}
        """,
        extra="description: 2024-01-31",
    )

    spec = parse_architecture(text).architecture.dataflows["orders"].services["ingest"]

    assert spec.deployment is not None
    assert spec.deployment.cpu == "1"
    assert spec.deployment.environment_vars == {
        "WORKERS": "4",
        "DEBUG": "yes",
        "RATIO": "0.50",
        "EMPTY": "",
        "ON": "1",
    }
    assert spec.description == "2024-01-31"


def test_null_values_leave_fields_at_their_defaults() -> None:
    text = doc(
        """
        project_id: acme-dev
        region:
        dataflows:
          orders:
            services:
              ingest:
                deployment:
        """
    )

    architecture = parse_architecture(text).architecture

    assert architecture.region == ""
    assert architecture.dataflows["orders"].services["ingest"].deployment is None


def test_merge_keys_and_aliases_are_expanded() -> None:
    text = doc(
        """
        project_id: acme-dev
        defaults: &defaults {image_repo: acme-images, cpu: "1"}
        dataflows:
          orders:
            services:
              ingest:
                deployment: {<<: *defaults, cpu: "2"}
        """
    )

    loaded = parse_architecture(text)

    deployment = loaded.architecture.dataflows["orders"].services["ingest"].deployment
    assert deployment is not None
    assert (deployment.image_repo, deployment.cpu) == ("acme-images", "2")
    assert [problem.path for problem in loaded.warnings] == ["defaults"]


# --- reading the input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (b"project_id: acme-dev\nname: \xff\n", 2, "not UTF-8"),
        ("project_id: acme-dev\nregion: [europe\n", 3, "invalid YAML at line 3, column 1"),
        ("project_id: acme-dev\n  region: x\n", 2, "invalid YAML at line 2, column 9"),
        ("project_id: 'acme-dev\n", 2, "invalid YAML at line 2"),
        ("", 1, "the file is empty"),
        ("# nothing but a comment\n", 1, "the file is empty"),
        ("- project_id\n", 1, "must be a mapping"),
        ("project_id: acme-dev\n---\nproject_id: b\n", 2, "single document"),
        ("project_id: acme-dev\nname: a\x00b\n", 2, "not allowed in YAML"),
        ("project_id: !!python/name:os.system ''\n", 1, "could not determine a constructor"),
        ("project_id: *missing\n", 1, "undefined alias"),
    ],
    ids=[
        "not-utf8",
        "unclosed-bracket",
        "bad-indentation",
        "unclosed-quote",
        "empty",
        "only-comments",
        "root-is-a-list",
        "two-documents",
        "control-character",
        "python-tag",
        "undefined-alias",
    ],
)
def test_unreadable_input_is_reported_with_its_line(
    text: str | bytes, line: int, fragment: str
) -> None:
    (problem,) = problems(text)

    assert (problem.path, problem.line) == ("", line)
    assert fragment in problem.message
    assert problem.fix
    assert problem.file == "<inline>"


@pytest.mark.parametrize(
    "text",
    [b"#" * (MAX_ARCHITECTURE_BYTES + 1), "é" * (MAX_ARCHITECTURE_BYTES // 2 + 1)],
    ids=["bytes", "text-counted-in-utf8"],
)
def test_a_document_over_the_size_limit_is_refused(text: str | bytes) -> None:
    (problem,) = problems(text)

    assert (problem.path, problem.line) == ("", None)
    assert "larger than 1048576 bytes" in problem.message
    assert "check that this is the right file" in problem.fix


def test_loading_a_file_over_the_size_limit_reads_no_more_than_the_limit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (MAX_ARCHITECTURE_BYTES * 3))

    with pytest.raises(ArchitectureError, match="larger than"):
        load_architecture(path)


def test_a_missing_file_is_an_architecture_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    with pytest.raises(ArchitectureError) as raised:
        load_architecture(path)

    (problem,) = raised.value.problems
    assert problem.file == str(path)
    assert "cannot read the architecture file" in problem.message


def test_a_billion_laughs_alias_bomb_is_refused_quickly() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 10):
        this, previous = chr(ord("a") + level), chr(ord("a") + level - 1)
        lines.append(f"{this}: &{this} [{', '.join([f'*{previous}'] * 9)}]")
    started = time.perf_counter()

    (problem,) = problems("\n".join(lines))

    assert time.perf_counter() - started < 2
    assert "alias bomb" in problem.message
    assert problem.line is not None and problem.line <= 10


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("a: &a [1, *a]\n", 1, "alias `*a` refers to a value that contains it"),
        ("[" * 200_000 + "]" * 200_000, 1, "nested more than 64 levels"),
        ("- " * 200_000 + "x\n", 1, "nested more than 64 levels"),
        (
            "x: &x [1]\n" + "".join(f"x{i}: &x{i} [*x{i - 1 if i else ''}]\n" for i in range(70)),
            63,
            "nested more than 64 levels",
        ),
    ],
    ids=["recursive-alias", "deep-flow", "deep-block", "deep-through-aliases"],
)
def test_documents_nested_too_deep_are_refused_without_crashing(
    text: str, line: int, fragment: str
) -> None:
    (problem,) = problems(text)

    assert (problem.path, problem.line) == ("", line)
    assert fragment in problem.message
    assert problem.fix


def test_duplicate_keys_are_errors_naming_the_key_and_both_lines() -> None:
    text = doc(
        """
        project_id: acme-dev
        dataflows:
          orders:
            services:
              ingest: {}
              ingest: {}
        region: europe-west1
        region: europe-west2
        """
    )

    found = problems(text)

    service_duplicate = at(found, f"{FLOW}.ingest")
    assert service_duplicate.line == 6
    assert "duplicate key `ingest`: first at line 5, again at line 6" in service_duplicate.message
    assert at(found, "region").line == 8


def test_duplicate_keys_are_reported_with_the_other_problems() -> None:
    text = "project_id: acme-dev\nproject_id: ACME\n"

    found = problems(text)

    assert [problem.message.split(":")[0] for problem in found] == [
        "duplicate key `project_id`",
        "`ACME` is not a valid Google Cloud project id",
    ]


# --- pydantic's errors become problems ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "line", "fragment"),
    [
        ("name: dev\n", "project_id", 1, "`project_id` is required"),
        (service("cpu: [1]"), f"{FLOW}.ingest.deployment.cpu", 7, "must be text, not a list"),
        (
            service("min_instances: many"),
            f"{FLOW}.ingest.deployment.min_instances",
            7,
            "must be a whole number",
        ),
        (
            service("min_instances: -1"),
            f"{FLOW}.ingest.deployment.min_instances",
            7,
            "greater than or equal to 0",
        ),
        (
            service("min_instances: 3\nmax_instances: 2"),
            f"{FLOW}.ingest.deployment.min_instances",
            7,
            "min_instances (3) is greater than max_instances (2)",
        ),
        (
            service(extra="health_check: {port: 70000}"),
            f"{FLOW}.ingest.health_check.port",
            6,
            "less than or equal to 65535",
        ),
        (
            service("secret_environment_vars:\n  - name: DB_PASSWORD"),
            f"{FLOW}.ingest.deployment.secret_environment_vars[0].value_from",
            8,
            "`value_from` is required",
        ),
        (
            "project_id: acme-dev\ndataflows: [orders]\n",
            "dataflows",
            2,
            "must be a mapping of keys to values, not a list",
        ),
        (
            "project_id: acme-dev\nteardown_protection: maybe\n",
            "teardown_protection",
            2,
            "must be true or false",
        ),
        (
            service(extra="dependencies: director"),
            f"{FLOW}.ingest.dependencies",
            6,
            "must be a list, not text",
        ),
    ],
    ids=[
        "missing-project-id",
        "list-for-text",
        "text-for-number",
        "negative-instances",
        "min-above-max",
        "port-out-of-range",
        "secret-without-value-from",
        "dataflows-as-list",
        "text-for-bool",
        "dependencies-as-text",
    ],
)
def test_type_errors_name_the_field_its_line_and_the_fix(
    text: str, path: str, line: int, fragment: str
) -> None:
    problem = at(problems(text), path)

    assert problem.line == line
    assert fragment in problem.message
    assert problem.fix


@pytest.mark.parametrize(
    ("text", "path", "allowed"),
    [
        (
            "project_id: acme-dev\nservice_manager_spec:\n  name: director\n"
            "  command_topic: {name: c, lookup: {key: k, method: envv}}\n",
            "service_manager_spec.command_topic.lookup.method",
            "'env', 'yaml' or 'db'",
        ),
        (
            "project_id: acme-dev\ndataflows:\n  orders:\n    lifecycle: {strategy: forever}\n",
            "dataflows.orders.lifecycle.strategy",
            "'permanent' or 'ephemeral'",
        ),
    ],
    ids=["lookup-method", "lifecycle-strategy"],
)
def test_unknown_enum_values_list_the_allowed_ones(text: str, path: str, allowed: str) -> None:
    problem = at(problems(text), path)

    assert problem.line == 4
    assert allowed in problem.message
    assert allowed in problem.fix


def test_a_missing_field_next_to_a_misspelt_key_suggests_renaming_it() -> None:
    text = service("secret_environment_vars:\n  - {name: DB_PASSWORD, valueFrom: db-password}")

    problem = at(problems(text), f"{FLOW}.ingest.deployment.secret_environment_vars[0].value_from")

    assert problem.line == 8
    assert problem.fix == "rename `valueFrom` to `value_from`"


def test_a_type_error_does_not_hide_the_other_checks() -> None:
    text = service("cpu: [1]\nmemory: lots\nenvironment_vars: {PORT: '1'}")

    found = problems(text)

    assert [problem.path.rsplit(".", 1)[-1] for problem in found] == ["cpu", "memory", "PORT"]


def test_multiple_problems_are_reported_together_in_line_order() -> None:
    text = doc(
        """
        project_id: Acme
        region: Europe
        dataflows:
          orders:
            services:
              Ingest:
                dependencies: [nowhere]
        """
    )

    found = problems(text)

    assert [(problem.path, problem.line) for problem in found] == [
        ("project_id", 1),
        ("region", 2),
        (f"{FLOW}.Ingest", 6),
        (f"{FLOW}.Ingest.dependencies[0]", 7),
    ]
    assert str(problems(text)[0]).startswith("<inline>:1: project_id: ")


# --- unknown keys ------------------------------------------------------------------------


def test_an_unknown_key_is_a_warning_with_a_did_you_mean() -> None:
    text = service(extra="deploymnet: {cpu: '1'}")

    (warning,) = parse_architecture(text).warnings

    assert warning.path == f"{FLOW}.ingest.deploymnet"
    assert warning.line == 6
    assert "unknown key `deploymnet`" in warning.message
    assert warning.fix == "did you mean `deployment`?"


def test_an_unknown_key_is_an_error_when_strict() -> None:
    text = "project_id: acme-dev\nregoin: europe-west1\n"

    (problem,) = problems(text, strict=True)

    assert (problem.path, problem.line) == ("regoin", 2)
    assert problem.fix == "did you mean `region`?"


def test_an_unknown_key_without_a_close_match_lists_the_known_keys() -> None:
    (warning,) = parse_architecture("project_id: acme-dev\nzzz: 1\n").warnings

    assert "known keys: name, project_id" in warning.fix


def test_free_form_and_pass_through_sections_take_any_keys_silently() -> None:
    text = doc(
        """
        project_id: acme-dev
        labels: {team: orders}
        topics: [{name: old, anything: 1}]
        dataflows:
          orders:
            services:
              ingest:
                metadata: {owner: {anything: [1, 2]}}
                deployment:
                  environment_vars: {ANY_NAME: x}
                  config_templates: {app.yaml: app.yaml}
            resources:
              topics:
                - name: orders-raw
                  message_retention_duration: 168h
                  producer_service: {name: ingest, extra: x}
              gcs_buckets: [{name: b, versioning: true}]
        """
    )

    loaded = parse_architecture(text)

    assert loaded.warnings == []
    resources = loaded.architecture.dataflows["orders"].resources
    assert resources.gcs_buckets[0].model_extra == {"versioning": True}


def test_an_unknown_key_among_the_resource_kinds_is_still_a_warning() -> None:
    text = "project_id: acme-dev\ndataflows:\n  orders:\n    resources:\n      topcis: []\n"

    (warning,) = parse_architecture(text).warnings

    assert (warning.path, warning.line) == ("dataflows.orders.resources.topcis", 5)
    assert warning.fix == "did you mean `topics`?"


# --- project, regions, environments ------------------------------------------------------


@pytest.mark.parametrize(
    "project_id",
    ['""', "acme", "Acme-dev", "1acme-dev", "acme-dev-", "acme_dev", "a" * 31],
    ids=[
        "empty",
        "too-short",
        "uppercase",
        "starts-with-digit",
        "ends-with-hyphen",
        "underscore",
        "too-long",
    ],
)
def test_an_invalid_project_id_is_an_error_with_an_example(project_id: str) -> None:
    problem = at(problems(f"name: dev\nproject_id: {project_id}\n"), "project_id")

    assert problem.line == 2
    assert "acme-dev" in problem.fix or "project_id: my-gcp-project" in problem.fix


@pytest.mark.parametrize(
    "project_id",
    ["acme-dev", "a" * 30, "example.com:acme-dev"],
    ids=["plain", "30-chars", "domain"],
)
def test_valid_project_ids_load(project_id: str) -> None:
    assert parse_architecture(f"project_id: {project_id}\n").architecture.project_id == project_id


@pytest.mark.parametrize(
    ("region", "valid"),
    [
        ("europe-west1", True),
        ("northamerica-northeast2", True),
        ("Europe", False),
        ("europe-west", False),
        ("eu", False),
    ],
    ids=["europe-west1", "long-name", "capitalised", "no-number", "multi-region"],
)
def test_regions_must_look_like_google_cloud_regions(region: str, valid: bool) -> None:
    text = service(f"region: {region}", name="ingest").replace(
        "project_id: acme-dev\n", f"project_id: acme-dev\nregion: {region}\n"
    )

    if valid:
        assert parse_architecture(text).architecture.region == region
        return
    found = problems(text)
    assert at(found, "region").line == 2
    deployment_region = at(found, f"{FLOW}.ingest.deployment.region")
    assert deployment_region.line == 8
    assert "europe-west1" in deployment_region.fix


ENVIRONMENTS = doc(
    """
    name: dev
    project_id: acme-dev
    region: europe-west1
    deployment_environments:
      prod: {name: prod, project_id: acme-prod, region: us-central1}
      staging: {project_id: acme-staging}
    """
)


def test_selecting_an_environment_applies_its_overrides() -> None:
    loaded = parse_architecture(ENVIRONMENTS, environment="prod")

    architecture = loaded.architecture
    assert (architecture.name, architecture.project_id, architecture.region) == (
        "prod",
        "acme-prod",
        "us-central1",
    )
    assert parse_architecture(ENVIRONMENTS).architecture.project_id == "acme-dev"


def test_an_unknown_environment_lists_the_known_ones() -> None:
    (problem,) = problems(ENVIRONMENTS, environment="prd")

    assert (problem.path, problem.line) == ("deployment_environments", 4)
    assert "unknown environment `prd`" in problem.message
    assert problem.fix == "did you mean `prod`? known environments: prod, staging"


def test_an_environment_in_a_file_without_environments_says_so() -> None:
    (problem,) = problems("project_id: acme-dev\n", environment="prod")

    assert "defines no `deployment_environments`" in problem.fix


def test_an_environment_override_is_checked_too() -> None:
    text = ENVIRONMENTS.replace("acme-staging", "Staging")

    problem = at(problems(text), "deployment_environments.staging.project_id")

    assert problem.line == 6


def test_a_selected_environment_may_supply_the_project_id() -> None:
    text = ENVIRONMENTS.replace("project_id: acme-dev", 'project_id: ""')

    assert parse_architecture(text, environment="prod").architecture.project_id == "acme-prod"
    assert at(problems(text), "project_id").message == "`project_id` is empty"


# --- service names and dependencies ------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["Ingest", "ingest_svc", "1ingest", "ingest-", "a" * 50, "ingest.v2"],
    ids=["uppercase", "underscore", "starts-with-digit", "ends-with-hyphen", "50-chars", "dot"],
)
def test_a_service_name_must_be_a_valid_cloud_run_name(name: str) -> None:
    text = service(extra=f"name: {name}", name="ingest")

    problem = at(problems(text), f"{FLOW}.ingest.name")

    assert problem.line == 6
    assert "not a valid Cloud Run service name" in problem.message
    assert "at most 49 characters" in problem.fix


def test_a_service_key_is_its_name_and_49_characters_are_allowed() -> None:
    name = "a" * 49

    architecture = parse_architecture(service(name=name)).architecture

    assert architecture.dataflows["orders"].services[name].name == name


def test_an_invalid_name_taken_from_the_key_points_at_the_key_and_suggests_one() -> None:
    problem = at(problems(service(name="Ingest_Svc")), f"{FLOW}.Ingest_Svc")

    assert problem.line == 5
    assert "e.g. `ingest-svc`" in problem.fix


def test_a_name_that_differs_from_its_key_is_a_warning() -> None:
    (warning,) = parse_architecture(service(extra="name: ingester")).warnings

    assert (warning.path, warning.line) == (f"{FLOW}.ingest.name", 6)
    assert "`ingest` is named `ingester`" in warning.message


def test_service_names_are_unique_across_dataflows_and_the_director() -> None:
    text = doc(
        """
        project_id: acme-dev
        service_manager_spec:
          name: ingest
        dataflows:
          orders:
            services:
              ingest: {}
          billing:
            services:
              collect: {name: ingest}
        """
    )

    found = problems(text)

    first, second = (
        at(found, f"{FLOW}.ingest"),
        at(found, "dataflows.billing.services.collect.name"),
    )
    assert (first.line, second.line) == (7, 10)
    assert "`service_manager_spec.name` (line 3)" in first.message
    assert f"`{FLOW}.ingest` (line 7)" in first.message
    assert "`dataflows.billing.services.collect.name` (line 10)" in second.message


def test_the_director_needs_a_name() -> None:
    problem = at(
        problems("project_id: acme-dev\nservice_manager_spec: {}\n"), "service_manager_spec.name"
    )

    assert problem.line == 2
    assert "add `name: director`" in problem.fix


def test_a_dependency_on_an_unknown_service_suggests_the_closest_name() -> None:
    text = EXAMPLE.read_text().replace("dependencies: [director]", "dependencies: [directr]")

    problem = at(problems(text), f"{FLOW}.ingest.dependencies[0]")

    assert problem.line == 20
    assert "`directr` is not a service of this architecture" in problem.message
    assert problem.fix == "did you mean `director`?"


def test_a_dependency_cycle_is_reported_as_a_chain() -> None:
    text = doc(
        """
        project_id: acme-dev
        dataflows:
          orders:
            services:
              a: {dependencies: [b]}
              b: {dependencies: [c]}
              c: {dependencies: [a]}
              d: {dependencies: [a]}
        """
    )

    (problem,) = problems(text)

    assert (problem.path, problem.line) == (f"{FLOW}.a.dependencies", 5)
    assert problem.message == "dependency cycle: a -> b -> c -> a"


def test_a_service_depending_on_itself_is_a_cycle() -> None:
    (problem,) = problems(service(extra="dependencies: [ingest]"))

    assert problem.message == "dependency cycle: ingest -> ingest"


# --- environment variables and secrets ---------------------------------------------------

ENV = f"{FLOW}.ingest.deployment.environment_vars"
SECRETS = f"{FLOW}.ingest.deployment.secret_environment_vars"


@pytest.mark.parametrize(
    ("name", "path", "fragment"),
    [
        ("1BAD", f'{ENV}["1BAD"]', "not a valid environment variable name"),
        ("BAD-NAME", f"{ENV}.BAD-NAME", "not a valid environment variable name"),
        ("PORT", f"{ENV}.PORT", "reserved by Cloud Run"),
        ("K_SERVICE", f"{ENV}.K_SERVICE", "reserved by Cloud Run"),
        ("K_REVISION", f"{ENV}.K_REVISION", "reserved by Cloud Run"),
        ("K_CONFIGURATION", f"{ENV}.K_CONFIGURATION", "reserved by Cloud Run"),
    ],
    ids=["starts-with-digit", "hyphen", "PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"],
)
def test_invalid_or_reserved_environment_variable_names_are_errors(
    name: str, path: str, fragment: str
) -> None:
    text = service(f"environment_vars:\n  {name}: x")

    problem = at(problems(text), path)

    assert problem.line == 8
    assert fragment in problem.message


@pytest.mark.parametrize(
    "name", ["SERVICE_DIRECTOR_URL", "PROJECT_ID", "SERVICE_NAME", "DATAFLOW_NAME"]
)
def test_variables_archdeploy_sets_itself_are_warnings(name: str) -> None:
    (warning,) = parse_architecture(service(f"environment_vars:\n  {name}: x")).warnings

    assert (warning.path, warning.line) == (f"{ENV}.{name}", 8)
    assert "archdeploy sets" in warning.message


@pytest.mark.parametrize(
    "name",
    [
        "DB_PASSWORD",
        "JWT_SECRET",
        "GITHUB_TOKEN",
        "STRIPE_API_KEY",
        "PRIVATE_KEY",
        "GCP_CREDENTIALS",
    ],
)
def test_a_plain_text_secret_is_an_error_that_never_shows_its_value(name: str) -> None:
    text = service(f"environment_vars:\n  {name}: s3cr3t-value")

    with pytest.raises(ArchitectureError) as raised:
        parse_architecture(text)

    problem = at(raised.value.problems, f"{ENV}.{name}")
    assert problem.line == 8
    assert "secret_environment_vars" in problem.fix
    assert "s3cr3t-value" not in str(raised.value)


@pytest.mark.parametrize(
    "environment_vars",
    ["{DB_PASSWORD: ''}", "{MAX_TOKENS: '100'}", "{PASSWORDLESS: 'true'}"],
    ids=["empty-value", "not-a-secret-word", "word-inside-another"],
)
def test_names_that_are_not_secrets_or_hold_no_value_are_accepted(environment_vars: str) -> None:
    text = service(f"environment_vars: {environment_vars}")

    assert parse_architecture(text).warnings == []


def test_a_variable_set_both_plainly_and_as_a_secret_is_an_error() -> None:
    text = service(
        """
        environment_vars: {DB_USER: app}
        secret_environment_vars:
          - {name: DB_USER, value_from: db-user}
        """
    )

    problem = at(problems(text), f"{SECRETS}[0].name")

    assert problem.line == 9
    assert "both in `environment_vars` and here" in problem.message


def test_a_secret_listed_twice_is_an_error() -> None:
    text = service(
        "secret_environment_vars:\n  - {name: A, value_from: a}\n  - {name: A, value_from: b}"
    )

    assert at(problems(text), f"{SECRETS}[1].name").line == 9


@pytest.mark.parametrize(
    ("value_from", "valid"),
    [
        ("db-password", True),
        ("DB_PASSWORD_2", True),
        ("projects/acme-dev/secrets/db-password", True),
        ("projects/123/secrets/db-password/versions/latest", True),
        ("projects/acme-dev/secrets/db-password/versions/3", True),
        ("hunter2 with spaces", False),
        ("projects/acme-dev/db-password", False),
        ("projects/acme-dev/secrets/db-password/versions/newest", False),
        ("a" * 256, False),
    ],
    ids=[
        "id",
        "id-underscores",
        "resource-name",
        "latest-version",
        "numbered-version",
        "spaces",
        "no-secrets-segment",
        "named-version",
        "too-long",
    ],
)
def test_secret_references_must_be_secret_ids_or_resource_names(
    value_from: str, valid: bool
) -> None:
    text = service(
        f"secret_environment_vars:\n  - name: DB_PASSWORD\n    value_from: '{value_from}'"
    )

    if valid:
        parse_architecture(text)
        return
    with pytest.raises(ArchitectureError) as raised:
        parse_architecture(text)
    problem = at(raised.value.problems, f"{SECRETS}[0].value_from")
    assert problem.line == 9
    assert "projects/PROJECT/secrets/SECRET" in problem.fix
    assert value_from not in str(raised.value)


# --- cpu and memory ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "valid"),
    [
        ("cpu", "'1'", True),
        ("cpu", "2", True),
        ("cpu", "0.5", True),
        ("cpu", "1000m", True),
        ("cpu", "0", False),
        ("cpu", "one", False),
        ("cpu", "1 cpu", False),
        ("memory", "512Mi", True),
        ("memory", "1Gi", True),
        ("memory", "2G", True),
        ("memory", "512MB", False),
        ("memory", "512", False),
        ("memory", "0Mi", False),
    ],
    ids=lambda value: str(value),
)
def test_cpu_and_memory_formats_are_checked_with_an_example(
    field: str, value: str, valid: bool
) -> None:
    text = service(f"{field}: {value}")

    if valid:
        parse_architecture(text)
        return
    problem = at(problems(text), f"{FLOW}.ingest.deployment.{field}")
    assert problem.line == 7
    assert ("1000m" if field == "cpu" else "512Mi") in problem.fix


# --- paths -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deployment", "path", "fragment"),
    [
        ("source_path: ../elsewhere", "source_path", "leads out of"),
        ("source_path: services/../../elsewhere", "source_path", "leads out of"),
        ("source_path: /etc", "source_path", "outside"),
        (
            "source_path: services\nbuildable_module_path: ../../up",
            "buildable_module_path",
            "leads out of",
        ),
        (
            "config_templates: {../secrets.env: app.env}",
            'config_templates["../secrets.env"]',
            "leads out of",
        ),
    ],
    ids=["parent", "parent-after-normalising", "absolute", "module-path", "template-source"],
)
def test_source_paths_must_stay_inside_the_architecture_directory(
    tmp_path: Path, deployment: str, path: str, fragment: str
) -> None:
    found = problems(service(deployment), base_dir=tmp_path)

    problem = at(found, f"{FLOW}.ingest.deployment.{path}")
    assert problem.line in (7, 8)
    assert fragment in problem.message
    assert "inside the architecture file's directory" in problem.fix


def test_an_absolute_path_inside_the_directory_is_accepted(tmp_path: Path) -> None:
    text = service(f"source_path: {tmp_path / 'services'}")

    parse_architecture(text, base_dir=tmp_path)


def test_an_absolute_path_without_a_directory_to_check_against_is_refused() -> None:
    problem = at(
        problems(service("source_path: /srv/ingest")), f"{FLOW}.ingest.deployment.source_path"
    )

    assert "is absolute" in problem.message


def test_a_symbolic_link_out_of_the_directory_is_caught(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "arch").mkdir()
    (tmp_path / "arch" / "services").symlink_to(outside)

    found = problems(service("source_path: services"), base_dir=tmp_path / "arch")

    assert f"resolves to {outside}" in at(found, f"{FLOW}.ingest.deployment.source_path").message


def test_a_loop_of_symbolic_links_is_refused_and_a_link_inside_is_not(tmp_path: Path) -> None:
    # The check resolves paths as strings (os.path.realpath), not with pathlib: a loop,
    # which realpath leaves unresolved, must still be found, as Path.resolve found it.
    (tmp_path / "services").mkdir()
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "inside").symlink_to(tmp_path / "services")

    looped = problems(service("source_path: a"), base_dir=tmp_path)
    problem = at(looped, f"{FLOW}.ingest.deployment.source_path")
    assert "cannot be resolved (a loop of symbolic links?)" in problem.message
    parse_architecture(service("source_path: inside"), base_dir=tmp_path)  # no error


@pytest.mark.parametrize(
    "target",
    ["../app.env", "/etc/app.env", "conf/../../app.env", "''"],
    ids=["parent", "absolute", "nested-parent", "empty"],
)
def test_config_template_targets_must_be_relative_file_names(target: str) -> None:
    text = service(f"config_templates:\n  app.env: {target}")

    problem = at(problems(text), f'{FLOW}.ingest.deployment.config_templates["app.env"]')

    assert problem.line == 8
    assert "inside the build directory" in problem.message


def test_missing_sources_are_reported_with_their_resolved_path(tmp_path: Path) -> None:
    architecture = tmp_path / "architecture.yaml"
    architecture.write_text(
        service("source_path: services/ingest\nconfig_templates: {conf/app.env: app.env}")
    )

    with pytest.raises(ArchitectureError) as raised:
        load_architecture(architecture, check_paths_exist=True)

    found = raised.value.problems
    source = at(found, f"{FLOW}.ingest.deployment.source_path")
    assert (source.line, source.file) == (7, str(architecture))
    assert source.message == f"directory {tmp_path / 'services' / 'ingest'} does not exist"
    template = at(found, f'{FLOW}.ingest.deployment.config_templates["conf/app.env"]')
    assert template.message == f"file {tmp_path / 'conf' / 'app.env'} does not exist"


@pytest.mark.parametrize(
    "source",
    ["gs://acme-sources/ingest.tar.gz", "github://acme/shop@main/services/ingest"],
    ids=["gcs", "github"],
)
def test_remote_sources_are_left_to_the_source_adapters(tmp_path: Path, source: str) -> None:
    text = service(f"source_path: {source}\nconfig_templates: {{'{source}/app.env': app.env}}")

    parse_architecture(text, base_dir=tmp_path, check_paths_exist=True)


def test_existing_sources_pass_the_existence_check(tmp_path: Path) -> None:
    (tmp_path / "services" / "ingest").mkdir(parents=True)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.env").write_text("A=1\n")
    architecture = tmp_path / "architecture.yaml"
    architecture.write_text(
        service("source_path: services/ingest\nconfig_templates: {conf/app.env: app.env}")
    )

    loaded = load_architecture(architecture, check_paths_exist=True)

    assert loaded.base_dir == tmp_path
    assert load_architecture(architecture).warnings == []


# --- the JSON schema ---------------------------------------------------------------------


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    return []


def test_the_json_schema_describes_the_file_for_editors() -> None:
    schema = architecture_json_schema()

    json.dumps(schema)  # serialisable as is
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"] and schema["description"]
    assert schema["type"] == "object"
    assert "project_id" in schema["required"]
    assert {"dataflows", "service_manager_spec", "topics", "subscriptions"} <= set(
        schema["properties"]
    )
    assert schema["additionalProperties"] is False
    definitions = schema["$defs"]
    assert all(ref.removeprefix("#/$defs/") in definitions for ref in _refs(schema))
    assert definitions["DeploymentSpec"]["additionalProperties"] is False
    assert definitions["TopicResource"]["additionalProperties"] is True
    assert "additionalProperties" not in schema["properties"]["topics"]


def test_the_json_schema_is_a_fresh_copy_each_time() -> None:
    architecture_json_schema()["title"] = "changed"

    assert architecture_json_schema()["title"] == "archdeploy architecture"
