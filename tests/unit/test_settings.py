"""The settings read `ARCHDEPLOY_*` variables as pydantic-settings did (shared/settings.py
replaced it): keyword arguments first, then the variable in any case, then the default;
list fields hold JSON; every bad value is one `UsageError` naming the variable."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.errors import EXIT_USAGE, UsageError
from shared.settings import ENV_PREFIX, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import os

    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX) or name == "GOOGLE_CLOUD_PROJECT":
            monkeypatch.delenv(name)
    yield


def test_defaults_when_nothing_is_set() -> None:
    settings = load_settings()

    assert settings.backend == "local" and settings.bus_kind == "inprocess"
    assert settings.state_dir == Path(".archdeploy") and settings.parallelism == 32
    assert settings.webhook_branches == ["main"] and settings.http_allowed_origins == []
    assert settings.model_fields_set == set()


def test_a_variable_sets_its_field_with_its_type_and_counts_as_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ARCHDEPLOY_PARALLELISM", "7")
    monkeypatch.setenv("ARCHDEPLOY_STATE_DIR", "/tmp/somewhere")
    monkeypatch.setenv("ARCHDEPLOY_ASYNC_BUILDS", "false")
    monkeypatch.setenv("ARCHDEPLOY_HTTP_TOKEN", "s3cret")

    settings = Settings()

    assert settings.parallelism == 7 and settings.async_builds is False
    assert settings.state_dir == Path("/tmp/somewhere")
    assert settings.http_token is not None and settings.http_token.get_secret_value() == "s3cret"
    # `anchored_state_dir` relies on this: a state folder from the environment is explicit.
    assert {"parallelism", "state_dir", "async_builds", "http_token"} == settings.model_fields_set


def test_names_match_in_any_case_and_keyword_arguments_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("archdeploy_region", "us-central1")
    monkeypatch.setenv("ARCHDEPLOY_PARALLELISM", "7")

    settings = Settings(parallelism=3)

    assert settings.region == "us-central1" and settings.parallelism == 3


def test_a_list_variable_is_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHDEPLOY_WEBHOOK_BRANCHES", '["main", "release/*"]')

    assert load_settings().webhook_branches == ["main", "release/*"]


@pytest.mark.parametrize("value", ["main", "", '"main"', '{"a": 1}'])
def test_a_list_variable_that_is_not_a_json_list_is_refused_with_the_fix(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pydantic-settings raised its own SettingsError (a traceback) for text that is not JSON.
    monkeypatch.setenv("ARCHDEPLOY_WEBHOOK_BRANCHES", value)

    with pytest.raises(UsageError) as caught:
        load_settings()

    assert "ARCHDEPLOY_WEBHOOK_BRANCHES: Input should be a valid list" in str(caught.value)
    assert 'a JSON list, e.g. ["value"]' in str(caught.value)
    assert caught.value.exit_code == EXIT_USAGE


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PARALLELISM", "0", "ARCHDEPLOY_PARALLELISM: Input should be greater than or equal to 1"),
        ("PARALLELISM", "many", "ARCHDEPLOY_PARALLELISM: Input should be a valid integer"),
        ("BACKEND", "aws", "ARCHDEPLOY_BACKEND: Input should be 'local' or 'gcp'"),
        ("BUS", "", "ARCHDEPLOY_BUS: Input should be 'inprocess' or 'pubsub'"),
        ("ASYNC_BUILDS", "perhaps", "ARCHDEPLOY_ASYNC_BUILDS: Input should be a valid boolean"),
    ],
)
def test_a_bad_value_names_its_variable(
    name: str, value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"ARCHDEPLOY_{name}", value)

    with pytest.raises(UsageError, match="invalid settings") as caught:
        load_settings()

    assert message in str(caught.value)


def test_google_cloud_needs_a_project_which_google_cloud_project_can_give(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ARCHDEPLOY_BACKEND", "gcp")
    monkeypatch.setenv("ARCHDEPLOY_SOURCE_BUCKET", "b")
    with pytest.raises(UsageError, match="ARCHDEPLOY_PROJECT is required"):
        load_settings()

    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "acme")

    assert load_settings().project == "acme"


def test_a_bad_variable_ends_the_command_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    env = {"ARCHDEPLOY_WEBHOOK_BRANCHES": "main", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli.main", "runs"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == EXIT_USAGE, done.stderr
    assert "ARCHDEPLOY_WEBHOOK_BRANCHES" in done.stderr and "Traceback" not in done.stderr


def test_settings_import_neither_pydantic_settings_nor_asyncio() -> None:
    code = "import shared.settings, sys; print(sorted(m for m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )

    assert "'pydantic_settings'" not in done.stdout and "'asyncio'" not in done.stdout
