"""terraform/ agrees with the code it deploys.

Providers cannot be downloaded here, so `terraform validate` cannot run: the configuration
is parsed with python-hcl2 and checked against the code itself: the entry points and
their decorators, the settings model (topic names, required and known variables), the
IAM grants, the dead-letter wiring, and each function's requirements.txt against the
import closure of its main.py.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import shutil
import subprocess
import sys
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
from pydantic import ValidationError

from shared.adapters.gcp import cloud_build
from shared.settings import ENV_PREFIX, Settings
from tests.lockfile import locked_versions, normalized

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
FUNCTIONS = ROOT / "functions"

# The functions the code names, and how each is triggered (the list).
EXPECTED_FUNCTIONS = {
    "archdeploy-dispatcher": ("dispatcher", "dispatch", "pubsub"),
    "archdeploy-api": ("dispatcher", "dispatch_http", "http"),
    "archdeploy-webhook": ("dispatcher", "webhook", "http"),
    "archdeploy-worker": ("worker", "run_task", "pubsub"),
    "archdeploy-aggregator": ("aggregator", "aggregate", "pubsub"),
    "archdeploy-build-events": ("aggregator", "build_events", "pubsub"),
    "archdeploy-sweep": ("aggregator", "sweep", "http"),
    "archdeploy-dead-letters": ("aggregator", "dead_letters", "dead-letter"),
}
DECORATOR_FOR_TRIGGER = {"pubsub": "cloud_event", "http": "http", "dead-letter": "cloud_event"}
PUBLIC_MEMBERS = {"allUsers", "allAuthenticatedUsers"}
FORBIDDEN_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}


# --- reading the configuration -----------------------------------------------------------


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def _clean(value: Any) -> Any:
    """python-hcl2 output without its metadata keys and string quotes (any version)."""
    if isinstance(value, dict):
        return {
            _unquote(str(k)): _clean(v)
            for k, v in value.items()
            if not (str(k).startswith("__") and str(k).endswith("__"))
        }
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str):
        return _unquote(value)
    return value


@functools.cache
def _config() -> dict[str, Any]:
    """Every top-level block of terraform/*.tf, merged: locals by name, resources and data
    sources by type then name, variables by name."""
    merged: dict[str, Any] = {"locals": {}, "resource": {}, "data": {}, "variable": {}}
    for path in sorted(TERRAFORM.glob("*.tf")):
        with path.open() as handle:
            parsed = _clean(hcl2.load(handle))
        for block in parsed.get("locals", []):
            merged["locals"].update(block)
        for kind in ("resource", "data"):
            for block in parsed.get(kind, []):
                for rtype, named in block.items():
                    merged[kind].setdefault(rtype, {}).update(named)
        for block in parsed.get("variable", []):
            merged["variable"].update(block)
    return merged


def _locals() -> dict[str, Any]:
    return typing.cast(dict[str, Any], _config()["locals"])


def _resources(rtype: str) -> dict[str, Any]:
    return typing.cast(dict[str, Any], _config()["resource"].get(rtype, {}))


def _block(body: dict[str, Any], name: str) -> dict[str, Any]:
    blocks = body.get(name) or []
    assert len(blocks) == 1, f"expected one `{name}` block, found {len(blocks)}"
    return typing.cast(dict[str, Any], blocks[0])


def _functions() -> dict[str, dict[str, Any]]:
    return typing.cast(dict[str, dict[str, Any]], _locals()["functions"])


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def _tf_text_without_comments() -> str:
    lines = []
    for path in sorted(TERRAFORM.glob("*.tf")):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if not stripped.startswith(("#", "//")):
                lines.append(line.split(" # ")[0])
    return "\n".join(lines)


FUNCTION_KEYS = sorted(_functions())


# --- formatting --------------------------------------------------------------------------


def test_terraform_files_are_formatted() -> None:
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.fail(
            "terraform is not on PATH: install Terraform >= 1.5 "
            "(https://developer.hashicorp.com/terraform/install) to check terraform/"
        )
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"run `terraform fmt -recursive terraform/`:\n{result.stdout}"


# --- functions and entry points ----------------------------------------------------------


def test_the_eight_functions_are_wired_to_the_entry_points_the_code_names() -> None:
    wired = {
        f["name"]: (f["source"], f["entry_point"], f["trigger"]) for f in _functions().values()
    }
    assert wired == EXPECTED_FUNCTIONS


def test_every_function_is_a_second_generation_python_311_function() -> None:
    fn = _resources("google_cloudfunctions2_function")["fn"]
    assert fn["for_each"] == "${local.functions}"
    build = _block(fn, "build_config")
    assert build["runtime"] == "python311"
    assert build["entry_point"] == "${each.value.entry_point}"
    # No Eventarc trigger: every event function is fed by an owned push subscription.
    assert "event_trigger" not in fn
    assert not _resources("google_eventarc_trigger")


def _decorators(main: Path, entry_point: str) -> list[str]:
    tree = ast.parse(main.read_text(), filename=str(main))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == entry_point:
            return [
                ast.unparse(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list
            ]
    raise AssertionError(f"{main.relative_to(ROOT)} defines no top-level function {entry_point}()")


@pytest.mark.parametrize("key", FUNCTION_KEYS, ids=FUNCTION_KEYS)
def test_every_entry_point_exists_with_the_decorator_its_trigger_needs(key: str) -> None:
    function = _functions()[key]
    main = FUNCTIONS / function["source"] / "main.py"
    expected = f"functions_framework.{DECORATOR_FOR_TRIGGER[function['trigger']]}"
    assert expected in _decorators(main, function["entry_point"]), (
        f"{function['name']} is triggered by {function['trigger']}: "
        f"{main.relative_to(ROOT)}:{function['entry_point']} needs @{expected}"
    )


def test_each_function_archive_holds_its_main_py_its_requirements_and_shared() -> None:
    archive = _config()["data"]["archive_file"]["function_source"]
    names = [s["filename"] for s in archive["source"]]
    assert names == ["main.py", "requirements.txt"]
    shared = archive["dynamic"][0]["source"]
    assert shared["for_each"] == "${local.shared_files}"
    assert _block(shared, "content")["filename"] == "shared/${source.value}"
    obj = _resources("google_storage_bucket_object")["function_source"]
    assert "${each.value.output_md5}" in obj["name"], "a code change must make a new object"
    for source in {f["source"] for f in _functions().values()}:
        assert (FUNCTIONS / source / "requirements.txt").is_file()


# --- settings ----------------------------------------------------------------------------


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def _terraform_topic_names() -> set[str]:
    topics = _locals()["topics"]
    return {*topics.values(), _locals()["cloud_builds_topic"]}


def test_every_topic_the_settings_default_to_exists_in_terraform(clean_environment: None) -> None:
    settings = Settings(backend="gcp", project="p", source_bucket="b")
    defaults = {
        name: getattr(settings, name) for name in Settings.model_fields if name.startswith("topic_")
    }
    assert defaults, "the settings model has no topic_* fields any more"
    missing = {
        name: topic for name, topic in defaults.items() if topic not in _terraform_topic_names()
    }
    assert not missing, (
        f"topics the functions will publish to but terraform/ never creates: {missing}"
    )
    assert _resources("google_pubsub_topic")["main"]["for_each"] == "${local.topics}"
    assert (
        _resources("google_pubsub_topic")["cloud_builds"]["name"] == "${local.cloud_builds_topic}"
    )


def test_every_event_function_consumes_a_topic_terraform_knows() -> None:
    names = _locals()["topic_names"]
    assert names == "${merge(local.topics, {build_events = local.cloud_builds_topic})}"
    known = {*_locals()["topics"], "build_events"}
    for key, function in _functions().items():
        if function["trigger"] == "pubsub":
            assert function["topic"] in known, f"{key} consumes unknown topic {function['topic']!r}"
        else:
            assert function["topic"] is None, f"{key} is HTTP-triggered but names a topic"


def _function_env(key: str) -> set[str]:
    fn = _resources("google_cloudfunctions2_function")["fn"]
    service = _block(fn, "service_config")
    assert service["environment_variables"] == "${local.function_env}"
    secrets = _block(service, "dynamic")["secret_environment_variables"]
    assert secrets["for_each"].startswith("${{for env_name, secret_key in each.value.secrets")
    return {*_locals()["function_env"], *_functions()[key]["secrets"]}


def _is_literal(annotation: Any) -> bool:
    return typing.get_origin(annotation) is typing.Literal or any(
        _is_literal(arg) for arg in typing.get_args(annotation)
    )


def _required_for_gcp() -> set[str]:
    """Settings the gcp backend cannot start without: each one, left out of an otherwise
    complete configuration, makes the model refuse it."""
    candidates = {
        name: "sample"
        for name, field in Settings.model_fields.items()
        if field.get_default(call_default_factory=True) in ("", None)
        and not _is_literal(field.annotation)
    }
    Settings(backend="gcp", **candidates)  # complete: must be accepted
    required = set()
    for name in candidates:
        try:
            Settings(backend="gcp", **{k: v for k, v in candidates.items() if k != name})
        except ValidationError:
            required.add(name)
    return required


def test_the_settings_model_still_requires_a_project_and_a_source_bucket_for_gcp(
    clean_environment: None,
) -> None:
    # Guards the derivation below: if this changes, the check still holds, but look again.
    assert _required_for_gcp() == {"project", "source_bucket"}


@pytest.mark.parametrize("key", FUNCTION_KEYS, ids=FUNCTION_KEYS)
def test_every_setting_the_gcp_backend_requires_is_set_on_every_function(
    key: str, clean_environment: None
) -> None:
    env = _function_env(key)
    missing = {f"{ENV_PREFIX}{name.upper()}" for name in _required_for_gcp()} - env
    assert not missing, f"{_functions()[key]['name']} would refuse to start: set {sorted(missing)}"


def _sample_env_value(name: str) -> str:
    field = Settings.model_fields[name]
    default = field.get_default(call_default_factory=True)
    if default in ("", None):
        return "sample"
    if isinstance(default, (list, dict)):
        return json.dumps(default)
    if isinstance(default, bool):
        return str(default).lower()
    return str(default)


@pytest.mark.parametrize("key", FUNCTION_KEYS, ids=FUNCTION_KEYS)
def test_the_settings_model_accepts_the_environment_terraform_gives_each_function(
    key: str, clean_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    terraform_env = {**_locals()["function_env"], **_functions()[key]["secrets"]}
    for env_name, value in terraform_env.items():
        field = env_name.removeprefix(ENV_PREFIX).lower()
        literal = "${" not in value and field not in {"webhook_secret", "github_token"}
        monkeypatch.setenv(env_name, value if literal else _sample_env_value(field))
    settings = Settings()
    assert settings.backend == "gcp"
    assert settings.bus_kind == "pubsub" and settings.store_kind == "firestore"


def test_every_archdeploy_variable_in_terraform_is_a_settings_field() -> None:
    named = set(re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]+\b", _tf_text_without_comments()))
    assert named, "terraform/ sets no ARCHDEPLOY_* variable at all"
    unknown = {n for n in named if n.removeprefix(ENV_PREFIX).lower() not in Settings.model_fields}
    assert not unknown, f"not settings fields (typos?): {sorted(unknown)}"


def test_the_api_function_gets_no_bearer_token_because_iam_already_authenticates_it() -> None:
    # Callers send a Google ID token in Authorization; ARCHDEPLOY_HTTP_TOKEN would compare
    # that header with a shared token and refuse every IAM-authenticated call.
    assert f"{ENV_PREFIX}HTTP_TOKEN" not in _function_env("api")


# --- IAM ---------------------------------------------------------------------------------


def _iam_resources() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for rtype, named in _config()["resource"].items():
        if "_iam_" in rtype:
            for name, body in named.items():
                yield rtype, name, body


def test_no_iam_grant_is_a_basic_role() -> None:
    # Roles appear as plain values and inside expressions (toset([...]), maps in locals).
    granted = {role for s in _strings(_config()) for role in re.findall(r"roles/[\w.]+", s)}
    assert granted, "no roles found: did the parsing change?"
    assert not granted & FORBIDDEN_ROLES, f"basic roles granted: {granted & FORBIDDEN_ROLES}"
    text = _tf_text_without_comments()
    for role in FORBIDDEN_ROLES:
        assert role not in text, f"{role} appears in terraform/"


def test_no_iam_grant_is_authoritative_over_the_project() -> None:
    # *_iam_binding / *_iam_policy on the project would remove every grant made elsewhere.
    authoritative = [
        f"{rtype}.{name}"
        for rtype, name, _ in _iam_resources()
        if rtype.startswith("google_project_iam_")
        and not rtype.endswith(("_member", "_custom_role"))  # a custom role grants nothing
    ]
    assert not authoritative


def test_the_worker_may_set_invoker_bindings_with_a_role_of_just_that() -> None:
    # run/docs/securing/managing-access: roles/run.developer "Can get but not set IAM
    # policies"; the worker grants roles/run.invoker on the services it wires together.
    (role,) = _resources("google_project_iam_custom_role").values()
    assert sorted(role["permissions"]) == ["run.services.getIamPolicy", "run.services.setIamPolicy"]
    grant = _resources("google_project_iam_member")["worker_run_invoker_admin"]
    assert "run_invoker_admin" in grant["role"] and "worker" in grant["member"]


def test_builds_run_as_a_builder_account_the_worker_may_act_as() -> None:
    # Since 2024 new projects' builds default to the Compute Engine account ("Cloud Build
    # default service account change"); the worker names archdeploy-builder instead.
    assert "builder" in _locals()["service_accounts"]
    assert "archdeploy-builder@" in str(_locals()["cloud_build_account"])
    assert _locals()["build_account_needs_act_as"] is True
    for key in ("worker",):
        env = _function_env(key)
        assert {"ARCHDEPLOY_BUILD_SERVICE_ACCOUNT", "ARCHDEPLOY_DEFAULT_SERVICE_ACCOUNT"} <= env


def test_only_the_webhook_function_has_a_public_invoker() -> None:
    public = [
        (rtype, name, body)
        for rtype, named in _config()["resource"].items()
        for name, body in named.items()
        if PUBLIC_MEMBERS & set(_strings(body))
    ]
    public_locals = [
        name for name, value in _locals().items() if PUBLIC_MEMBERS & set(_strings(value))
    ]
    assert not public_locals, f"public members in locals: {public_locals}"
    assert len(public) == 1, f"expected one public grant, found {[(t, n) for t, n, _ in public]}"
    rtype, _, body = public[0]
    assert rtype == "google_cloud_run_service_iam_member"
    assert body["role"] == "roles/run.invoker"
    assert body["service"].startswith('${google_cloudfunctions2_function.fn["webhook"].')


def test_each_function_is_invoked_only_by_the_identity_that_feeds_it() -> None:
    invokers = _resources("google_cloud_run_service_iam_member")
    assert invokers["pubsub_push"]["for_each"] == "${local.consumers}"
    assert invokers["pubsub_push"]["service"].startswith(
        "${google_cloudfunctions2_function.fn[each.key]."
    )
    assert invokers["pubsub_push"]["member"] == '${local.sa_member["pubsub-push"]}'
    assert invokers["scheduler_sweep"]["service"].startswith(
        '${google_cloudfunctions2_function.fn["sweep"].'
    )
    assert invokers["scheduler_sweep"]["member"] == '${local.sa_member["scheduler"]}'
    assert invokers["api_invokers"]["service"].startswith(
        '${google_cloudfunctions2_function.fn["api"].'
    )
    assert invokers["pubsub_push_dead_letters"]["service"].startswith(
        '${google_cloudfunctions2_function.fn["dead-letters"].'
    )
    assert invokers["pubsub_push_dead_letters"]["member"] == '${local.sa_member["pubsub-push"]}'
    assert set(invokers) == {
        "pubsub_push",
        "pubsub_push_dead_letters",
        "scheduler_sweep",
        "api_invokers",
        "webhook_public",
    }


def test_the_scheduler_calls_the_sweep_with_an_oidc_token_of_its_own_account() -> None:
    job = _resources("google_cloud_scheduler_job")["sweep"]
    target = _block(job, "http_target")
    assert target["uri"].startswith('${google_cloudfunctions2_function.fn["sweep"].')
    token = _block(target, "oidc_token")
    assert token["service_account_email"] == '${google_service_account.sa["scheduler"].email}'
    assert token["audience"] == target["uri"]


# --- delivery ----------------------------------------------------------------------------


def _push_subscriptions() -> dict[str, Any]:
    subs = {n: b for n, b in _resources("google_pubsub_subscription").items() if "push_config" in b}
    assert subs, "no push subscription found"
    return subs


def test_every_event_function_has_a_push_subscription() -> None:
    consumers = _locals()["consumers"]
    assert consumers == '${{for k, f in local.functions : k => f if f.trigger == "pubsub"}}'
    feeds = {name: b["for_each"] for name, b in _push_subscriptions().items()}
    assert feeds == {
        "push": "${local.consumers}",
        "dead_letter_push": "${local.dead_letter_handled}",
    }


def test_dead_lettered_tasks_and_completions_reach_the_dead_letters_function() -> None:
    handled = _locals()["dead_letter_handled"]
    for consumer in ("worker", "aggregator", "build-events"):
        assert f'"{consumer}"' in handled
    body = _push_subscriptions()["dead_letter_push"]
    assert body["topic"] == "${google_pubsub_topic.dead_letter[each.key].id}"
    endpoint = _block(body, "push_config")["push_endpoint"]
    assert endpoint.startswith('${google_cloudfunctions2_function.fn["dead-letters"].')


PUSH_SUBSCRIPTIONS = sorted(_push_subscriptions())


@pytest.mark.parametrize("name", PUSH_SUBSCRIPTIONS, ids=PUSH_SUBSCRIPTIONS)
def test_every_push_subscription_retries_with_backoff_and_dead_letters(name: str) -> None:
    body = _push_subscriptions()[name]
    dead_letter = _block(body, "dead_letter_policy")
    assert dead_letter["max_delivery_attempts"] == "${var.max_delivery_attempts}"
    assert dead_letter["dead_letter_topic"] in {
        "${google_pubsub_topic.dead_letter[each.key].id}",
        "${google_pubsub_topic.dead_letter_parking.id}",  # the dead-letter handlers' own
    }
    retry = _block(body, "retry_policy")
    assert retry["minimum_backoff"] and retry["maximum_backoff"]
    assert _block(body, "expiration_policy")["ttl"] == "", "a push subscription must never expire"
    token = _block(_block(body, "push_config"), "oidc_token")
    assert token["service_account_email"] == '${google_service_account.sa["pubsub-push"].email}'


def test_poison_messages_are_dead_lettered_after_five_deliveries_by_default() -> None:
    assert _config()["variable"]["max_delivery_attempts"]["default"] == 5


def test_the_pubsub_service_agent_can_move_messages_to_every_dead_letter_topic() -> None:
    publisher = _resources("google_pubsub_topic_iam_member")["dead_letter_publisher"]
    subscriber = _resources("google_pubsub_subscription_iam_member")["dead_letter_subscriber"]
    for grant, role in (
        (publisher, "roles/pubsub.publisher"),
        (subscriber, "roles/pubsub.subscriber"),
    ):
        assert grant["for_each"] == "${local.consumers}"
        assert grant["member"] == "${local.pubsub_service_agent}"
        assert grant["role"] == role
    kept = _resources("google_pubsub_subscription")["dead_letter"]
    assert kept["for_each"] == "${local.consumers}", "a topic without a subscription drops messages"


def test_the_build_events_filter_lets_every_finished_build_through() -> None:
    statuses = set(_locals()["terminal_build_statuses"])
    assert statuses == {cloud_build.SUCCESS, *cloud_build.FAILED_STATUSES}
    push = _resources("google_pubsub_subscription")["push"]
    assert push["filter"] == '${each.key == "build-events" ? local.build_status_filter : null}'


# --- requirements ------------------------------------------------------------------------

# Import name (longest dotted prefix wins) -> the distribution that provides it.
DISTRIBUTIONS = {
    "functions_framework": "functions-framework",
    "flask": "flask",
    "werkzeug": "werkzeug",
    "cloudevents": "cloudevents",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic",
    "yaml": "pyyaml",
    "requests": "requests",
    "grpc": "grpcio",
    "google.api_core": "google-api-core",
    "google.auth": "google-auth",
    "google.oauth2": "google-auth",
    "google.protobuf": "protobuf",
    "google.cloud.pubsub": "google-cloud-pubsub",
    "google.cloud.pubsub_v1": "google-cloud-pubsub",
    "google.cloud.firestore": "google-cloud-firestore",
    "google.cloud.firestore_v1": "google-cloud-firestore",
    "google.cloud.devtools": "google-cloud-build",
    "google.cloud.run_v2": "google-cloud-run",
    # Cloud Run's IAM messages: grpc-google-iam-v1, which google-cloud-run requires and
    # imports itself (its Services client has Get/SetIamPolicy).
    "google.iam.v1": "google-cloud-run",
    "google.cloud.storage": "google-cloud-storage",
    "click": "click",
    "rich": "rich",
    "pathspec": "pathspec",
}
CLI_ONLY = {"click", "rich"}

# bootstrap.py picks adapters from settings. With ARCHDEPLOY_BACKEND=gcp the local ones are
# never loaded. Every role builds the GcpDeployer (the dispatcher and aggregator only to
# cancel builds through it), but only the worker's deploys and builds.
# The machine-wide build slots (`bootstrap.machine_slots`) come only with the SQLite store.
_LOCAL_ADAPTERS = {
    "shared.adapters.local.sqlite_store",
    "shared.adapters.local.deployer",
    "shared.adapters.local.build_slots",
}
NOT_LOADED = {
    "dispatcher": _LOCAL_ADAPTERS,
    "aggregator": _LOCAL_ADAPTERS,
    "worker": _LOCAL_ADAPTERS,
}
# Functions whose lazy imports a folder never runs: build_resource makes a Cloud Build
# request, which only the worker's GcpDeployer does (the aggregator only parses builds).
# The dispatcher's and aggregator's GcpDeployer only cancels builds: it never deploys
# (cloud_run), retries a call (retry) or makes a Cloud Run or Storage client.
_ONLY_CANCELS = {
    ("shared.adapters.gcp.cloud_build", "build_resource"),
    ("shared.adapters.gcp.deployer", "_new_client"),
    ("shared.adapters.gcp.retry", "is_transient"),
    ("shared.adapters.gcp.retry", "call"),
    *(
        ("shared.adapters.gcp.cloud_run", node.name)
        for node in ast.walk(ast.parse((ROOT / "shared/adapters/gcp/cloud_run.py").read_text()))
        if isinstance(node, ast.FunctionDef)
    ),
}
# Embedded only: a run's driver (psutil) is recorded and checked only on the in-process
# bus, never by a function on Pub/Sub.
_EMBEDDED_DRIVER = {("shared.core.runtime", "this_process"), ("shared.core.control", "_alive")}
NOT_CALLED = {
    "dispatcher": _ONLY_CANCELS | _EMBEDDED_DRIVER,
    "aggregator": _ONLY_CANCELS | _EMBEDDED_DRIVER,
    "worker": _EMBEDDED_DRIVER,
}


def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str) -> Iterator[tuple[str, str]]:
    """(imported dotted name, enclosing top-level function or "") of every import that can
    run, skipping `if TYPE_CHECKING:` blocks."""

    def visit(nodes: Iterable[ast.AST], function: str) -> Iterator[tuple[str, str]]:
        for child in nodes:
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                yield from visit(child.orelse, function)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, function
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = module.split(".")[: -child.level]
                    base = ".".join([*package, base] if base else package)
                for alias in child.names:
                    yield f"{base}.{alias.name}", function
            defined = (
                child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else ""
            )
            yield from visit(ast.iter_child_nodes(child), function or defined)

    yield from visit(ast.iter_child_nodes(tree), "")


def _distribution(name: str) -> str | None:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        found = DISTRIBUTIONS.get(".".join(parts[:end]))
        if found:
            return found
    return None


def _third_party_closure(source: str) -> dict[str, str]:
    """distribution -> where it is first imported, for functions/<source>/main.py and the
    shared modules it can load."""
    needed: dict[str, str] = {}
    queue: list[tuple[str, Path]] = [("main", FUNCTIONS / source / "main.py")]
    seen: set[str] = set()
    while queue:
        module, path = queue.pop()
        if module in seen:
            continue
        seen.add(module)
        for name, function in _imports(ast.parse(path.read_text()), module):
            if (module, function) in NOT_CALLED[source]:
                continue
            top = name.split(".")[0]
            if top == "shared":
                parts = name.split(".")
                # `from shared.x import y`: y is a module or a name in shared.x; every
                # package on the way is imported too.
                for end in range(1, len(parts) + 1):
                    dotted = ".".join(parts[:end])
                    found = _module_file(dotted)
                    if found and dotted not in NOT_LOADED[source]:
                        queue.append((dotted, found))
                continue
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            distribution = _distribution(name)
            assert distribution, (
                f"{module} imports {name}: add its distribution to DISTRIBUTIONS in this test"
            )
            needed.setdefault(distribution, module)
    return needed


def _requirements(source: str, file: str = "requirements.in") -> dict[str, str]:
    """name -> pinned version ("" when unpinned) of a function's requirements file."""
    names = {}
    for line in (FUNCTIONS / source / file).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.match(r"([A-Za-z0-9._-]+)(?:==([^ ;]+))?", line)
            assert match, f"cannot read requirement {line!r}"
            names[normalized(match.group(1))] = match.group(2) or ""
    return names


SOURCES = sorted({f["source"] for f in _functions().values()})


@pytest.mark.parametrize("source", SOURCES, ids=SOURCES)
def test_each_requirements_in_lists_what_its_function_imports(source: str) -> None:
    needed = _third_party_closure(source)
    listed = _requirements(source)
    missing = {dist: module for dist, module in needed.items() if dist not in listed}
    assert not missing, (
        f"functions/{source}/requirements.in misses {sorted(missing)} "
        f"(imported by {sorted(set(missing.values()))})"
    )


@pytest.mark.parametrize("source", SOURCES, ids=SOURCES)
def test_no_function_needs_or_installs_the_cli_only_packages(source: str) -> None:
    needed = _third_party_closure(source)
    pulled = {dist: module for dist, module in needed.items() if dist in CLI_ONLY}
    assert not pulled, f"functions/{source} reaches CLI-only packages: {pulled}"
    # click comes with functions-framework itself; rich would only be ours to drop.
    assert "rich" not in _requirements(source, "requirements.txt")


@pytest.mark.parametrize("source", SOURCES, ids=SOURCES)
def test_each_requirements_txt_pins_what_ci_tested(source: str) -> None:
    """What terraform ships is what the lock installed for the tests: every package of the
    function's requirements.in and all they need, at uv.lock's version (`make lock`)."""
    pinned = _requirements(source, "requirements.txt")
    locked = locked_versions()
    assert set(_requirements(source)) <= set(pinned), "run `make lock`"
    drifted = {name: (v, locked.get(name)) for name, v in pinned.items() if locked.get(name) != v}
    assert not drifted, f"functions/{source}/requirements.txt differs from uv.lock: {drifted}"
