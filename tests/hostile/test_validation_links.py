"""Case 4: a symbolic link out of a service's source tree is refused at validation and at
build, naming the link and its target; links that stay inside the tree are kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.adapters.local.deployer import LocalDeployer
from shared.architecture.model import DeploymentSpec
from shared.errors import BackendError
from tests.hostile.doors_support import (
    SERVICE_ARCHITECTURE,
    assert_clean_failure,
    run_cli,
    wait_no_orphans,
)

SECRET_FILE = "/etc/passwd"


def _tree(tmp_path: Path, link_target: str | None) -> Path:
    svc = tmp_path / "svc"
    svc.mkdir()
    (svc / "main.py").write_text("print('svc')\n")
    (svc / "data.txt").write_text("inside\n")
    if link_target is not None:
        (svc / "passwd.txt").symlink_to(link_target)
    (tmp_path / "services.yaml").write_text(SERVICE_ARCHITECTURE)
    return tmp_path / "services.yaml"


def test_validate_refuses_a_link_out_of_the_tree_naming_it_and_its_target(tmp_path: Path) -> None:
    architecture = _tree(tmp_path, SECRET_FILE)

    result = run_cli(tmp_path, "validate", str(architecture))

    assert_clean_failure(result, 2)
    assert "passwd.txt -> /etc/passwd" in result.output
    assert "dataflows.orders.services.svc.deployment.source_path" in result.output
    assert "services.yaml:8:" in result.output  # file and line
    assert "replace the link with a copy" in result.output  # the fix


def test_a_dangling_link_out_and_a_linked_directory_out_are_refused_too(tmp_path: Path) -> None:
    architecture = _tree(tmp_path, "/nonexistent/archdeploy-secret")
    (tmp_path / "svc" / "etc").symlink_to("/etc")

    result = run_cli(tmp_path, "validate", str(architecture))

    assert_clean_failure(result, 2)
    assert "passwd.txt -> /nonexistent/archdeploy-secret" in result.output
    assert "etc -> /etc" in result.output


def test_up_refuses_it_before_anything_is_built_or_started(tmp_path: Path) -> None:
    architecture = _tree(tmp_path, SECRET_FILE)

    result = run_cli(tmp_path, "up", str(architecture))

    assert_clean_failure(result, 2)
    assert "passwd.txt -> /etc/passwd" in result.output
    state = tmp_path / "state"
    assert not (state / "run").exists() or not any((state / "run").iterdir())  # no deploy
    assert wait_no_orphans(tmp_path) == []


@pytest.mark.parametrize("target", ["data.txt", "./data.txt", "sub/../data.txt"])
def test_a_link_that_stays_inside_the_tree_is_allowed(tmp_path: Path, target: str) -> None:
    architecture = _tree(tmp_path, target)
    (tmp_path / "svc" / "sub").mkdir()

    result = run_cli(tmp_path, "validate", str(architecture))

    assert result.code == 0, result.output


def test_the_build_refuses_a_link_out_even_when_it_appeared_after_validation(
    tmp_path: Path,
) -> None:
    # Given a tree that validated, then gained a link out of it
    _tree(tmp_path, None)
    (tmp_path / "svc" / "passwd.txt").symlink_to(SECRET_FILE)
    deployer = LocalDeployer(tmp_path / "state")
    spec = DeploymentSpec(source_path=str(tmp_path / "svc"))
    # When it is built
    with pytest.raises(BackendError) as raised:
        deployer.build("svc", spec)
    # Then the build failed naming the link and its target, and no layer holds the file
    assert "passwd.txt -> /etc/passwd" in str(raised.value)
    assert not raised.value.retryable
    assert deployer.images.tags() == {}  # no image, so nothing to unpack beside a service
    assert os.path.islink(tmp_path / "svc" / "passwd.txt")  # the source was left as it was


def test_a_path_through_a_link_and_back_up_is_checked_where_the_build_reads(
    tmp_path: Path,
) -> None:
    """`link/../d`: the kernel resolves `link` first, then `..` (its target's parent),
    while the plan joins the text (`..` first) and the build reads the root's `d`. Here
    that `d` leads out of the tree: validation must see the path the build reads."""
    (tmp_path / "sub" / "x").mkdir(parents=True)
    (tmp_path / "sub" / "d").mkdir()  # what the kernel's reading finds: harmless
    (tmp_path / "link").symlink_to("sub/x")
    (tmp_path / "d").symlink_to("/etc")  # what the build would read
    (tmp_path / "services.yaml").write_text(
        SERVICE_ARCHITECTURE.replace("source_path: svc", "source_path: link/../d")
    )

    result = run_cli(tmp_path, "validate", str(tmp_path / "services.yaml"))

    assert_clean_failure(result, 2)
    assert "link/../d" in result.output
    assert "outside" in result.output
