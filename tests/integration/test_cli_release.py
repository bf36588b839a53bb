"""The CLI's release input: bad `release:`/`verify:` and bad rollbacks exit 2, clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from shared.cli.main import cli

VALID = """\
project_id: acme-dev
{release}dataflows:
  orders:
    services:
      ingest:
        deployment:
          source_path: services/ingest
          verify:
            - {check}
"""


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("release", "check", "needle"),
    [
        ("release: {strategy: steps, steps: [10, 50]}\n", "command: [smoke]", "release"),
        ("release: {soak: 5 minutes}\n", "command: [smoke]", "release.soak"),
        # the message quotes `command: [argv]`: printed whole, not eaten as markup
        ("", "{http: {path: /h}, command: [smoke]}", "`command: [argv]`"),
    ],
)
def test_bad_release_input_exits_2_naming_the_field_and_builds_nothing(
    tmp_path: Path, release: str, check: str, needle: str
) -> None:
    (tmp_path / "services" / "ingest").mkdir(parents=True)
    path = tmp_path / "services.yaml"
    path.write_text(VALID.format(release=release, check=check))
    for command in ("validate", "up"):
        code, out = _invoke("--state-dir", str(tmp_path / "state"), command, str(path))
        assert code == 2, out
        assert needle in out and str(path) in out and "Traceback" not in out
    assert not (tmp_path / "state" / "images").exists()


def test_rollback_with_no_promoted_release_exits_2(tmp_path: Path) -> None:
    code, out = _invoke("--state-dir", str(tmp_path), "rollback")
    assert code == 2 and "no promoted release to roll back" in out, out


def test_rollback_of_an_unknown_run_exits_2(tmp_path: Path) -> None:
    code, out = _invoke("--state-dir", str(tmp_path), "rollback", "r-nosuchrun")
    assert code == 2 and "no run 'r-nosuchrun' here" in out, out


LONG = "orders-ingest-with-a-long-name-33"  # 33 characters: 14 more for the tag is 47


@pytest.mark.parametrize("how", ["file", "flag"])
def test_a_name_too_long_for_a_release_tag_exits_2_and_builds_nothing(
    tmp_path: Path, how: str
) -> None:
    (tmp_path / "services" / "ingest").mkdir(parents=True)
    path = tmp_path / "services.yaml"
    release = "release: {strategy: all-at-once}\n" if how == "file" else ""
    text = VALID.format(release=release, check="command: [smoke]")
    path.write_text(text.replace("      ingest:\n", f"      {LONG}:\n"))
    args = ["--state-dir", str(tmp_path / "state"), "up", str(path)]
    code, out = _invoke(*args, *(["--release"] if how == "flag" else []))
    assert code == 2, out
    assert f"`{LONG}` is 33 characters" in out and "at most 32 characters" in out, out
    assert not (tmp_path / "state" / "images").exists()
    if how == "flag":  # without --release the same file is fine to validate
        assert _invoke("validate", str(path))[0] == 0


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "architecture.yaml"


def test_plan_shows_a_releases_tasks_only_when_one_is_asked_for() -> None:
    code, plain = _invoke("plan", str(EXAMPLE))
    assert code == 0 and "stage" not in plain and "promote" not in plain, plain

    code, out = _invoke("plan", str(EXAMPLE), "--release")

    assert code == 0, out
    assert "\ndeploy:" not in out
    stage, verify, promote, revert = (
        out.index(h) for h in ("stage (", "verify (", "promote (all at once", "revert (")
    )
    assert stage < verify < promote < revert
    assert "  enrich after ingest\n      DATAFLOW_NAME=orders" in out[stage:verify]
    assert "check http /healthz (its health check)" in out[verify:promote]
    assert "  ingest after dependents enrich" in out[revert:]


def test_plan_shows_the_files_steps_and_verify_checks(tmp_path: Path) -> None:
    (tmp_path / "services" / "ingest").mkdir(parents=True)
    path = tmp_path / "services.yaml"
    release = "release: {strategy: steps, steps: [50, 100], soak: 100ms}\n"
    path.write_text(VALID.format(release=release, check="{http: {path: /ready}}"))

    code, out = _invoke("plan", str(path))

    assert code == 0, out
    assert "promote (steps 50%, 100%, soak 0.1s, checks again at each):" in out
    assert "      check http /ready" in out
