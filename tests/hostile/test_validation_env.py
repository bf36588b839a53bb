"""Case 10: environment values that fail only at deploy (a NUL byte), or that hold a
secret in plain text, are refused by `archdeploy validate` with file, field, line and fix;
names and values that merely look alike are accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile.doors_support import SERVICE_ARCHITECTURE, assert_clean_failure, run_cli

FIELD = "dataflows.orders.services.svc.deployment.environment_vars"


def _architecture(tmp_path: Path, name: str, value_yaml: str) -> Path:
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "main.py").write_text("print('svc')\n")
    text = SERVICE_ARCHITECTURE + f"          environment_vars:\n            {name}: {value_yaml}\n"
    path = tmp_path / "services.yaml"
    path.write_text(text)
    return path


def test_a_nul_byte_in_a_value_is_refused_at_validation(tmp_path: Path) -> None:
    architecture = _architecture(tmp_path, "GREETING", '"hello\\0world"')

    result = run_cli(tmp_path, "validate", str(architecture))

    assert_clean_failure(result, 2)
    assert f"services.yaml:10: {FIELD}.GREETING" in result.output
    assert "NUL character" in result.output and "remove the NUL" in result.output
    assert "embedded null byte" not in result.output


SECRETS = {
    "key-suffix": ("STRIPE_KEY", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "looks like a secret"),
    "token-suffix": ("GITHUB_TOKEN", "ghp_16C7e42F292c6912E7710c838347Ae178B4a", "looks like"),
    "password-inside": ("DB_PASSWORD_PRIMARY", "hunter2hunter2", "looks like a secret"),
    "url-credentials": (
        "DATABASE_URL",
        "postgres://admin:pass@db.internal:5432/shop",
        "user and password",
    ),
    "bearer-value": ("AUTH_HEADER", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "Authorization"),
    "basic-value": ("UPSTREAM_AUTH", "Basic YWRtaW46cGFzc3dvcmQ=", "Authorization"),
}


@pytest.mark.parametrize(("name", "value", "message"), SECRETS.values(), ids=SECRETS.keys())
def test_a_secret_in_plain_text_is_refused(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    architecture = _architecture(tmp_path, name, f"'{value}'")

    result = run_cli(tmp_path, "validate", str(architecture))

    assert_clean_failure(result, 2)
    assert f"services.yaml:10: {FIELD}.{name}" in result.output
    assert message in result.output and "secret_environment_vars" in result.output
    assert value not in result.output  # the secret itself is never echoed


LOOKALIKES = {
    "public-key-path": ("PUBLIC_KEY_PATH", "/etc/keys/signing.pub"),
    "private-key-path": ("PRIVATE_KEY_PATH", "/var/run/secrets/key.pem"),
    "public-key": ("STRIPE_PUBLIC_KEY", "pk_live_abc"),
    "token-url": ("TOKEN_URL", "https://oauth2.googleapis.com/token"),
    "max-tokens": ("MAX_TOKENS", "100"),
    "secret-name": ("SECRET_NAME", "db-password"),
    "url-without-password": ("DATABASE_URL", "postgres://app@db.internal:5432/shop"),
    "https-url": ("UPSTREAM_URL", "https://api.example.com/v1?key=public"),
    "basic-word": ("AUTH_MODE", "Basic"),
    "keyboard": ("KEYBOARD_LAYOUT", "us"),
}


@pytest.mark.parametrize(("name", "value"), LOOKALIKES.values(), ids=LOOKALIKES.keys())
def test_names_and_values_that_only_look_alike_are_accepted(
    tmp_path: Path, name: str, value: str
) -> None:
    architecture = _architecture(tmp_path, name, f"'{value}'")

    result = run_cli(tmp_path, "validate", str(architecture))

    assert result.code == 0, result.output
