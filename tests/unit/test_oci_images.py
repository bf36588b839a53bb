"""The local OCI image store: reproducible, content-addressed images of a source tree."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.local.deployer import LocalDeployer
from shared.adapters.local.oci_images import (
    MEDIA_CONFIG,
    MEDIA_INDEX,
    MEDIA_LAYER,
    MEDIA_MANIFEST,
    REF_NAME,
    OciImageStore,
    image_digest,
)
from shared.architecture.model import DeploymentSpec
from shared.errors import BackendError

SOURCE = {
    "main.py": "print('hello')\n",
    "lib/util.py": "VALUE = 1\n",
    "static/logo.txt": "logo\n",
    ".dockerignore": "# local noise (Docker rules: anchored, so any depth is **/)\n**/*.log\n",
    ".gcloudignore": "docs/\n",
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def build(state: Path, source: Path, service: str = "svc", **spec: Any) -> str:
    deployment = DeploymentSpec(source_path=str(source), **spec)
    return LocalDeployer(state).build(service, deployment)


def layer_members(store: OciImageStore, image: str, index: int = 0) -> dict[str, tarfile.TarInfo]:
    digest = store.manifest(image)["layers"][index]["digest"]
    with tarfile.open(store.blob_path(digest), "r:gz") as tar:
        return {member.name: member for member in tar.getmembers()}


def test_the_same_source_gives_the_same_digest_wherever_and_whenever_it_lives(
    tmp_path: Path,
) -> None:
    first = write_tree(tmp_path / "a" / "svc", SOURCE)
    second = write_tree(tmp_path / "elsewhere" / "copy", SOURCE)
    for path in second.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))

    one = build(tmp_path / "state-1", first)
    again = build(tmp_path / "state-1", first)
    other = build(tmp_path / "state-2", second)

    assert one == again == other
    assert one.startswith("localhost/archdeploy/svc@sha256:")


@pytest.mark.parametrize(
    "change",
    [
        lambda src: (src / "main.py").write_text("print('hellO')\n"),
        lambda src: (src / "lib" / "new.py").write_text(""),
        lambda src: (src / "lib" / "util.py").rename(src / "lib" / "other.py"),
        lambda src: (src / "main.py").chmod(0o755),
    ],
    ids=["one-byte", "new-file", "renamed-file", "exec-bit"],
)
def test_a_changed_source_gives_a_different_digest(tmp_path: Path, change: Any) -> None:
    source = write_tree(tmp_path / "svc", SOURCE)
    before = build(tmp_path / "state", source)

    change(source)

    assert build(tmp_path / "state", source) != before


@pytest.mark.parametrize(
    "noise",
    [".git/HEAD", "__pycache__/main.cpython-311.pyc", "lib/util.pyc", ".venv/bin/python",
     ".archdeploy/run/x.json", "debug.log", "lib/deep/trace.log", "docs/index.md"],
    ids=["git", "pycache", "pyc", "venv", "archdeploy-state", "dockerignore", "dockerignore-nested",
         "gcloudignore-dir"],
)  # fmt: skip
def test_ignored_files_do_not_change_the_digest(tmp_path: Path, noise: str) -> None:
    source = write_tree(tmp_path / "svc", SOURCE)
    before = build(tmp_path / "state", source)

    write_tree(source, {noise: "noise"})
    after = build(tmp_path / "state", source)

    assert after == before
    assert not any(
        noise in name for name in layer_members(OciImageStore(tmp_path / "state" / "images"), after)
    )


def test_config_templates_land_in_the_image_and_override_source_files(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "svc", {**SOURCE, "settings.json": '{"from": "source"}'})
    templates = write_tree(
        tmp_path / "templates", {"prod.json": '{"from": "template"}', "c.ini": "x=1"}
    )
    image = build(
        tmp_path / "state",
        source,
        config_templates={
            str(templates / "prod.json"): "settings.json",
            str(templates / "c.ini"): "conf/app.ini",
        },
    )

    store = OciImageStore(tmp_path / "state" / "images")
    store.unpack(image, tmp_path / "unpacked")

    app = tmp_path / "unpacked" / "app"
    assert json.loads((app / "settings.json").read_text()) == {"from": "template"}
    assert (app / "conf" / "app.ini").read_text() == "x=1"
    assert (app / "lib" / "util.py").read_text() == SOURCE["lib/util.py"]


def test_a_config_template_that_does_not_exist_fails_the_build(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "svc", SOURCE)
    with pytest.raises(BackendError, match=r"building svc: config template .*missing\.json"):
        build(tmp_path / "state", source, config_templates={str(tmp_path / "missing.json"): "a"})


def test_the_store_is_a_valid_oci_image_layout(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "svc", SOURCE)
    image = build(tmp_path / "state", source, service="web")
    root = tmp_path / "state" / "images"

    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_text())
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == MEDIA_INDEX
    [entry] = index["manifests"]
    assert entry["mediaType"] == MEDIA_MANIFEST
    assert entry["annotations"] == {REF_NAME: "localhost/archdeploy/web"}
    assert entry["digest"] == image_digest(image)

    manifest = json.loads(blob(root, entry["digest"], entry["size"]))
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == MEDIA_MANIFEST
    assert manifest["config"]["mediaType"] == MEDIA_CONFIG
    config = json.loads(blob(root, manifest["config"]["digest"], manifest["config"]["size"]))
    assert config["rootfs"]["type"] == "layers"
    assert config["config"]["Cmd"] == ["python", "main.py"]
    [layer] = manifest["layers"]
    assert layer["mediaType"] == MEDIA_LAYER
    uncompressed = gzip.decompress(blob(root, layer["digest"], layer["size"]))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(uncompressed).hexdigest()]
    for path in (root / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name


def blob(root: Path, digest: str, size: int) -> bytes:
    algorithm, _, hex_digest = digest.partition(":")
    data = (root / "blobs" / algorithm / hex_digest).read_bytes()
    assert len(data) == size
    assert hashlib.sha256(data).hexdigest() == hex_digest
    return data


def test_layers_are_reproducible_tars_of_sorted_paths_with_fixed_metadata(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "svc", {**SOURCE, "run.sh": "#!/bin/sh\n"})
    (source / "run.sh").chmod(0o775)
    image = build(tmp_path / "state", source)

    members = layer_members(OciImageStore(tmp_path / "state" / "images"), image)

    assert list(members) == sorted(members)
    assert set(members) == {f"app/{name}" for name in [*SOURCE, "run.sh"]}
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members.values()} == {
        (0, 0, 0, "", "")
    }
    assert members["app/run.sh"].mode == 0o755
    assert members["app/main.py"].mode == 0o644
    blobs = (tmp_path / "state" / "images" / "blobs" / "sha256").iterdir()
    gzip_headers = [
        data[:10] for data in (p.read_bytes() for p in blobs) if data[:2] == b"\x1f\x8b"
    ]
    assert gzip_headers
    assert all(header[4:8] == b"\0\0\0\0" for header in gzip_headers)  # gzip mtime 0


def is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


@pytest.mark.parametrize(
    ("files", "command"),
    [
        ({"Procfile": "release: true\nweb: gunicorn -b :$PORT app:app\n", "main.py": ""},
         ["/bin/sh", "-c", "gunicorn -b :$PORT app:app"]),
        ({"main.py": "", "app.py": ""}, ["python", "main.py"]),
        ({"app.py": ""}, ["python", "app.py"]),
    ],
    ids=["procfile-web-line", "main-py", "app-py"],
)  # fmt: skip
def test_the_image_config_records_the_command(
    tmp_path: Path, files: dict[str, str], command: list[str]
) -> None:
    image = build(tmp_path / "state", write_tree(tmp_path / "svc", files))

    assert OciImageStore(tmp_path / "state" / "images").config(image).command == command


@pytest.mark.parametrize(
    ("files", "message"),
    [({"README.md": "hi"}, "nothing to run"), ({"Procfile": "worker: x\n"}, "no `web:` line")],
    ids=["no-entry-point", "procfile-without-web"],
)
def test_a_source_with_nothing_to_serve_is_refused(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    with pytest.raises(BackendError, match=message):
        build(tmp_path / "state", write_tree(tmp_path / "svc", files))


def test_source_path_must_be_an_existing_absolute_directory(tmp_path: Path) -> None:
    deployer = LocalDeployer(tmp_path / "state")
    with pytest.raises(BackendError, match="not absolute"):
        deployer.build("svc", DeploymentSpec(source_path="services/svc"))
    with pytest.raises(BackendError, match="does not exist"):
        deployer.build("svc", DeploymentSpec(source_path=str(tmp_path / "missing")))


def test_buildable_module_path_selects_a_subdirectory(tmp_path: Path) -> None:
    repo = write_tree(tmp_path / "repo", {"services/api/main.py": "", "README.md": ""})
    image = build(tmp_path / "state", repo, buildable_module_path="services/api")

    members = layer_members(OciImageStore(tmp_path / "state" / "images"), image)

    assert list(members) == ["app/main.py"]


def test_the_index_keeps_one_entry_per_service_pointing_at_its_latest_build(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "svc", SOURCE)
    build(tmp_path / "state", source, service="a")
    (source / "main.py").write_text("print('v2')\n")
    latest_a = build(tmp_path / "state", source, service="a")
    b = build(tmp_path / "state", source, service="b")

    tags = OciImageStore(tmp_path / "state" / "images").tags()

    assert tags == {
        "localhost/archdeploy/a": image_digest(latest_a),
        "localhost/archdeploy/b": image_digest(b),
    }


BUILD_IN_ANOTHER_PROCESS = """
import sys
from pathlib import Path
from shared.adapters.local.deployer import LocalDeployer
from shared.architecture.model import DeploymentSpec
state, source, prefix = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
for i in range(6):
    LocalDeployer(state).build(f"{prefix}{i}", DeploymentSpec(source_path=source))
"""


def test_concurrent_builds_from_threads_and_processes_keep_every_index_entry(
    tmp_path: Path,
) -> None:
    source = write_tree(tmp_path / "svc", SOURCE)
    state = tmp_path / "state"
    script = [sys.executable, "-c", BUILD_IN_ANOTHER_PROCESS, str(state), str(source)]
    others = [subprocess.Popen([*script, f"proc{n}-"]) for n in range(2)]
    deployer = LocalDeployer(state)
    spec = DeploymentSpec(source_path=str(source))
    with ThreadPoolExecutor(max_workers=6) as pool:
        images = list(pool.map(lambda i: deployer.build(f"thread{i}", spec), range(12)))
    assert [proc.wait(timeout=60) for proc in others] == [0, 0]

    tags = OciImageStore(state / "images").tags()

    expected = {f"thread{i}" for i in range(12)} | {
        f"proc{n}-{i}" for n in range(2) for i in range(6)
    }
    assert set(tags) == {f"localhost/archdeploy/{name}" for name in expected}
    assert len({image_digest(image) for image in images}) == 1
    assert list((state / "images" / "tmp").iterdir()) == []


def test_a_reference_that_is_not_pinned_by_digest_is_refused() -> None:
    with pytest.raises(BackendError, match="not pinned by digest"):
        image_digest("localhost/archdeploy/svc:latest")
