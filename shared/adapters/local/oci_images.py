"""A local OCI image store: content-addressed images of a service's source tree.

The store is an OCI image layout (image-layout 1.0.0) under `root`: `oci-layout`,
`index.json` (one entry per service, named by `org.opencontainers.image.ref.name`) and
`blobs/sha256/<hex>`. archdeploy keeps its own `cache/` beside them: `requirements/`
(layers, keyed by the requirements file's sha256) and `inputs/<service>/` (the image built
from each input digest, see `shared.adapters.input_digest`), plus `tmp/` and `index.lock`.

Layers are reproducible: sorted workspace-relative paths, mtime 0, uid/gid 0, mode 0755
or 0644 from the file's exec bit, gzip mtime 0. The same source therefore always gives
the same digest, wherever it lives and whenever it was checked out (skaffold's input
digest, extended to the whole image).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from shared.adapters.build_context import ContextRules
from shared.adapters.local.processes import file_lock, pip_install, write_json_atomic
from shared.architecture.source_links import refuse_links_leaving
from shared.errors import BackendError

if TYPE_CHECKING:  # tarfile and gzip load when an image is built or unpacked, not before:
    import tarfile  # an unchanged `up` does neither (docs/performance.md)

log = logging.getLogger(__name__)

REPOSITORY = "localhost/archdeploy"
REF_NAME = "org.opencontainers.image.ref.name"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


@dataclasses.dataclass(frozen=True)
class Layer:
    digest: str
    size: int
    diff_id: str  # sha256 of the uncompressed tar, as the image config lists it

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": MEDIA_LAYER, "digest": self.digest, "size": self.size}


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    command: list[str]
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    working_dir: str = "/"


def image_digest(reference: str) -> str:
    """The `sha256:<hex>` manifest digest a `repository@sha256:<hex>` reference pins."""
    _, _, digest = reference.rpartition("@")
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise BackendError(f"image {reference!r} is not pinned by digest (want NAME@sha256:HEX)")
    return digest


def collect_files(directory: Path, templates: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Workspace-relative POSIX path -> file, for everything an image of `directory` holds.

    What is kept follows `shared.adapters.build_context`, the rule Cloud Build sources
    follow too; `templates` (source file -> name inside the build dir) are added on top.
    """
    rules = ContextRules(directory)
    files = {rel: path for rel, path in rules.walk(directory) if path.is_file()}
    refuse_links_leaving(directory, files)
    for source, name in (templates or {}).items():
        files[_template_name(name)] = _template_source(source)
    return files


class OciImageStore:
    """Writes and reads images in an OCI image layout; safe across threads and processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    def add_layer(self, files: Mapping[str, Path], *, prefix: str) -> Layer:
        """A layer holding `files` (workspace path -> file) under `prefix/`."""
        self._ensure_layout()
        return self._write_layer(sorted((f"{prefix}/{rel}", path) for rel, path in files.items()))

    def requirements_layer(self, requirements: Path, *, python: str, cwd: Path) -> Layer:
        """`python -m pip install --target` of `requirements` under `deps/`, cached by its sha256.

        pip runs in `cwd`, so relative paths in the file resolve against the source dir.
        """
        self._ensure_layout()
        key = hashlib.sha256(requirements.read_bytes()).hexdigest()
        cache = self.root / "cache" / "requirements" / f"{key}.json"
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Held per key across processes: concurrent builds with one requirements file pip once.
        with file_lock(cache.with_suffix(".lock")):
            cached = self._cached_layer(cache)
            if cached is not None:
                log.debug("requirements layer for %s reused from cache", requirements)
                return cached
            with tempfile.TemporaryDirectory(dir=self.root / "tmp") as target:
                pip_install(python, requirements, Path(target), cwd=cwd)
                layer = self.add_layer(collect_files(Path(target)), prefix="deps")
            write_json_atomic(cache, dataclasses.asdict(layer))
        return layer

    def commit(
        self,
        service: str,
        layers: Sequence[Layer],
        *,
        command: Sequence[str],
        env: Mapping[str, str],
        working_dir: str,
    ) -> str:
        """Write the config and manifest, point the service's index entry at it, return its ref."""
        config = {
            "architecture": _ARCHITECTURES.get(platform.machine().lower(), platform.machine()),
            "os": sys.platform,
            "config": {
                "Cmd": list(command),
                "Env": [f"{key}={value}" for key, value in sorted(env.items())],
                "WorkingDir": working_dir,
            },
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": self._put_json(config, MEDIA_CONFIG),
            "layers": [layer.descriptor() for layer in layers],
        }
        descriptor = self._put_json(manifest, MEDIA_MANIFEST)
        self._tag(f"{REPOSITORY}/{service}", descriptor)
        return f"{REPOSITORY}/{service}@{descriptor['digest']}"

    def remember_input(self, service: str, input_digest: str, image: str) -> None:
        """Record that `image` was built for `service` from `input_digest`."""
        path = self._input_path(service, input_digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"image": image, "input_digest": input_digest})

    def image_for_input(self, service: str, input_digest: str) -> str | None:
        """The image built for `service` from `input_digest`, if its manifest is still here."""
        try:
            image = str(json.loads(self._input_path(service, input_digest).read_text())["image"])
            manifest = self.blob_path(image_digest(image))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, BackendError) as exc:
            log.warning("ignoring unreadable input record of %s: %s", service, exc)
            return None
        return image if manifest.is_file() else None

    def manifest(self, reference: str) -> dict[str, Any]:
        return self._read_json_blob(image_digest(reference))

    def config(self, reference: str) -> ImageConfig:
        raw = self._read_json_blob(self.manifest(reference)["config"]["digest"])["config"]
        env = dict(item.split("=", 1) for item in raw.get("Env") or [])
        return ImageConfig(list(raw.get("Cmd") or []), env, raw.get("WorkingDir") or "/")

    def tags(self) -> dict[str, str]:
        """Ref name -> manifest digest, from index.json."""
        return {m["annotations"][REF_NAME]: m["digest"] for m in self._read_index()["manifests"]}

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def unpack(self, reference: str, dest: Path) -> ImageConfig:
        """Extract the image's layers into `dest`, unless an earlier deploy already did."""
        config = self.config(reference)
        if not dest.is_dir():
            dest.parent.mkdir(parents=True, exist_ok=True)
            staging = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}")
            import tarfile

            for layer in self.manifest(reference)["layers"]:
                with tarfile.open(self._verified_blob(layer["digest"]), "r:gz") as tar:
                    _extract(tar, staging)
            try:
                staging.rename(dest)
            except OSError:  # another deploy of the same image got there first
                shutil.rmtree(staging, ignore_errors=True)
        return config

    def _ensure_layout(self) -> None:
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        if not (self.root / "oci-layout").exists():
            write_json_atomic(self.root / "oci-layout", {"imageLayoutVersion": "1.0.0"})

    def _write_layer(self, entries: Sequence[tuple[str, Path]]) -> Layer:
        import gzip
        import tarfile

        staging = self.root / "tmp" / f"layer-{uuid.uuid4().hex}"
        try:
            with staging.open("wb") as raw:
                blob = _HashingWriter(raw)
                with gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0) as gz:
                    diff = _HashingWriter(gz)
                    stream = cast("IO[bytes]", diff)
                    with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
                        for name, path in entries:
                            _add_file(tar, name, path)
            self._commit_blob(staging, blob.digest)
        finally:
            staging.unlink(missing_ok=True)  # still there only if something failed
        return Layer(blob.digest, blob.size, diff.digest)

    def _put_json(self, document: Mapping[str, Any], media_type: str) -> dict[str, Any]:
        data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.blob_path(digest).exists():
            staging = self.root / "tmp" / f"json-{uuid.uuid4().hex}"
            staging.write_bytes(data)
            self._commit_blob(staging, digest)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def _commit_blob(self, staging: Path, digest: str) -> None:
        # Same name means same bytes, so whichever concurrent writer lands last is fine.
        os.replace(staging, self.blob_path(digest))

    def _input_path(self, service: str, input_digest: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", input_digest):
            raise BackendError(f"input digest {input_digest!r} is not 64 hex digits")
        return self.root / "cache" / "inputs" / service / f"{input_digest}.json"

    def _tag(self, ref_name: str, descriptor: Mapping[str, Any]) -> None:
        with self._lock, file_lock(self.root / "index.lock"):
            manifests = self._read_index()["manifests"]
            others = [m for m in manifests if m.get("annotations", {}).get(REF_NAME) != ref_name]
            entry = {**descriptor, "annotations": {REF_NAME: ref_name}}
            manifests = sorted([*others, entry], key=lambda m: str(m["annotations"][REF_NAME]))
            index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests}
            write_json_atomic(self.root / "index.json", index)

    def _read_index(self) -> dict[str, Any]:
        path = self.root / "index.json"
        if not path.exists():
            return {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": []}
        return dict(json.loads(path.read_text()))

    def _read_json_blob(self, digest: str) -> dict[str, Any]:
        return dict(json.loads(self._verified_blob(digest).read_bytes()))

    def _verified_blob(self, digest: str) -> Path:
        path = self.blob_path(digest)
        if not path.is_file():
            raise BackendError(f"image blob {digest} is not in {self.root}: build the image again")
        if _file_sha256(path) != digest:
            raise BackendError(f"image blob {path} is corrupt: delete it and build again")
        return path

    def _cached_layer(self, cache: Path) -> Layer | None:
        if not cache.exists():
            return None
        layer = Layer(**json.loads(cache.read_text()))
        return layer if self.blob_path(layer.digest).exists() else None


class _HashingWriter:
    """A write-only stream that hashes and counts what passes through it."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._sha.update(data)
        self.size += len(data)
        self._raw.write(data)
        return len(data)

    def tell(self) -> int:  # tarfile asks where it starts
        return self.size

    def flush(self) -> None:
        self._raw.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self._sha.hexdigest()


def _add_file(tar: tarfile.TarFile, name: str, path: Path) -> None:
    import tarfile

    stat = path.stat()
    info = tarfile.TarInfo(name)
    info.size = stat.st_size
    info.mode = 0o755 if stat.st_mode & 0o111 else 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    with path.open("rb") as source:
        tar.addfile(info, source)


def _extract(tar: tarfile.TarFile, dest: Path) -> None:
    import tarfile

    # The "data" filter (3.11.4+) refuses absolute paths, links out of `dest` and devices.
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
    else:  # our own layers hold only regular files with relative names
        tar.extractall(dest)


def _template_name(name: str) -> str:
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts:
        raise BackendError(
            f"config template target {name!r} must be a relative path in the build dir"
        )
    return Path(name).as_posix()


def _template_source(source: str) -> Path:
    path = Path(source)
    if not path.is_absolute() or not path.is_file():
        raise BackendError(f"config template {source!r} is not an existing file (absolute path)")
    return path


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()
