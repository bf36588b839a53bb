"""Source archives for remote builds: packed deterministically, staged content-addressed.

`pack_source` turns a local source tree into a gzipped tarball whose bytes depend only on
the workspace-relative paths, contents and executable bits of the files it keeps: paths are
sorted, every mtime/uid/gid is zero and the gzip header carries no name or time. Building
the same tree twice therefore uploads the same object, named by its sha256.

What is left out is `shared.adapters.build_context`'s rule, the same as for local images:
`.gcloudignore` (else `.gitignore`) with gitignore rules, `.dockerignore` at the root and in
the build directory with Docker rules, the last match winning, `!` re-including.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from shared.adapters.build_context import ContextRules
from shared.adapters.gcp.retry import RetryPolicy
from shared.architecture.model import DeploymentSpec
from shared.errors import BackendError

log = logging.getLogger(__name__)

_GZIP_LEVEL = 9
UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024  # resumable uploads want multiples of 256 KiB


@dataclass(frozen=True)
class SourceArchive:
    data: bytes
    sha256: str
    names: tuple[str, ...]  # archive member paths, sorted

    def has_file(self, path: str) -> bool:
        return path in self.names


def pack_source(
    source_dir: str | Path,
    config_templates: Mapping[str, str] | None = None,
    *,
    build_dir: str = "",
) -> SourceArchive:
    """Pack `source_dir` plus `config_templates` (absolute file -> name in `build_dir`).

    Raises:
        ValueError: the source is not a directory, a template is missing, or a template
            name is not a relative path inside the build directory.
    """
    entries = source_entries(source_dir, config_templates, build_dir=build_dir)
    data = _tar_gz(sorted(entries.items()))
    return SourceArchive(data, hashlib.sha256(data).hexdigest(), tuple(sorted(entries)))


def source_entries(
    source_dir: str | Path,
    config_templates: Mapping[str, str] | None = None,
    *,
    build_dir: str = "",
) -> dict[str, Path]:
    """Archive path -> local file, for what `pack_source` packs. Raises as it does."""
    if not str(source_dir):  # Path("") would be the working directory
        raise ValueError("the spec has no source_path (set deployment.source_path)")
    root = Path(source_dir)
    if not root.is_dir():
        raise ValueError(f"source_path {str(root)!r} is not a directory")
    build = normalize_dir(build_dir)
    entries: dict[str, Path] = dict(ContextRules(root, build).walk(root))
    for source, name in sorted((config_templates or {}).items()):
        entries[_join(build, _template_name(name))] = _template_source(source)
    return entries


def build_context(entries: Mapping[str, Path], build_dir: str) -> dict[str, Path]:
    """The entries under `build_dir` (docker's context, pack's path), relative to it: all
    that a build reads, so all that its input digest needs."""
    build = normalize_dir(build_dir)
    if not build:
        return dict(entries)
    prefix = build + "/"
    return {
        name.removeprefix(prefix): path for name, path in entries.items() if name.startswith(prefix)
    }


def archive_names(data: bytes, object_name: str) -> tuple[str, ...]:
    """Member paths of a `.zip` or gzipped tar source someone else uploaded."""
    if object_name.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [n for n in archive.namelist() if not n.endswith("/")]
    else:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            members = [m.name for m in archive.getmembers() if not m.isdir()]
    return tuple(sorted(PurePosixPath(n).as_posix().removeprefix("./") for n in members))


def normalize_dir(path: str) -> str:
    """`path` as a clean relative POSIX directory ("" for the root)."""
    clean = PurePosixPath(path.replace(os.sep, "/").strip("/") or ".").as_posix()
    if clean.startswith("../") or clean == "..":
        raise ValueError(f"buildable_module_path {path!r} leaves the source directory")
    return "" if clean == "." else clean


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def _template_name(name: str) -> str:
    path = PurePosixPath(name.replace(os.sep, "/"))
    if not path.parts or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"config template name {name!r} must be a relative path in the build dir")
    return path.as_posix()


def _template_source(source: str) -> Path:
    path = Path(source)
    if not path.is_absolute() or not path.is_file():
        raise ValueError(f"config template {source!r} is not an existing file (absolute path)")
    return path


def _tar_gz(entries: Iterable[tuple[str, Path]]) -> bytes:
    buffer = io.BytesIO()
    write_tar_gz(entries, buffer)
    return buffer.getvalue()


def write_tar_gz(entries: Iterable[tuple[str, Path]], out: Any) -> None:
    """Write the archive of `entries` to the binary file object `out`, a chunk at a time."""
    with (
        gzip.GzipFile(
            filename="", mode="wb", fileobj=out, mtime=0, compresslevel=_GZIP_LEVEL
        ) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, path in entries:
            _add(tar, name, path)


class _Digest:
    """A write-only file object that keeps only the sha256 and size of what it is given."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def _add(tar: tarfile.TarFile, name: str, path: Path) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if path.is_symlink():
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
        info.mode = 0o777
        tar.addfile(info)
        return
    stat = path.stat()
    info.size = stat.st_size
    info.mode = 0o755 if stat.st_mode & 0o111 else 0o644
    with path.open("rb") as source:
        tar.addfile(info, source)


@dataclass(frozen=True)
class StagedSource:
    bucket: str
    object_name: str
    sha256: str
    names: tuple[str, ...]  # the archive's member paths


class SourceStager:
    """Puts a service's source where Cloud Build reads it.

    A local tree is packed and uploaded once to `gs://<bucket>/sources/<service>/<sha256>.tar.gz`
    (content-addressed: an existing object is reused, never overwritten); a `gs://` source
    is used as it is, and read once to list its files.
    """

    def __init__(
        self,
        client: Callable[[], Any],
        bucket: str,
        retry: RetryPolicy,
        *,
        region: str,
        rpc_timeout: float = 60.0,
        chunk_bytes: int = UPLOAD_CHUNK_BYTES,
    ) -> None:
        self._client = client
        self._chunk_bytes = chunk_bytes
        self._bucket = bucket
        self._retry = retry
        self._region = region
        self._rpc_timeout = rpc_timeout
        self._known_buckets: set[str] = set()

    def stage(self, service_name: str, spec: DeploymentSpec, context: str) -> StagedSource:
        if spec.source_path.startswith("gs://"):
            return self._remote_source(spec.source_path, context)
        # Never the whole archive in memory (a function's /tmp is memory too): one pass
        # hashes it to name the object, a second, byte-identical one (the archive is
        # deterministic) streams it in chunks, and only when the object is not there yet.
        try:
            entries = sorted(
                source_entries(
                    spec.source_path, spec.config_templates, build_dir=spec.buildable_module_path
                ).items()
            )
            digest = _Digest()
            write_tar_gz(entries, digest)
        except (OSError, ValueError) as exc:
            raise BackendError(f"{context}: {exc}") from exc
        sha256 = digest.sha.hexdigest()
        object_name = f"sources/{service_name}/{sha256}.tar.gz"
        self._upload(object_name, entries, context)
        return StagedSource(self._bucket, object_name, sha256, tuple(name for name, _ in entries))

    def _remote_source(self, url: str, context: str) -> StagedSource:
        bucket_name, _, object_name = url.removeprefix("gs://").partition("/")
        blob = self._client().bucket(bucket_name).blob(object_name)
        data: bytes = self._retry.call(
            lambda: blob.download_as_bytes(retry=None, timeout=self._rpc_timeout),
            context=f"{context}: reading {url}",
            api_call="storage.objects.get",
        )
        try:
            names = archive_names(data, object_name)
        except (OSError, ValueError) as exc:  # tarfile/zipfile errors derive from these
            raise BackendError(f"{context}: {url} is not a .tar.gz or .zip: {exc}") from exc
        return StagedSource(bucket_name, object_name, hashlib.sha256(data).hexdigest(), names)

    def _upload(self, object_name: str, entries: list[tuple[str, Path]], context: str) -> None:
        from google.api_core import exceptions as api

        bucket = self._source_bucket(context)
        blob = bucket.blob(object_name)
        exists = self._retry.call(
            lambda: blob.exists(retry=None, timeout=self._rpc_timeout),
            context=context,
            api_call="storage.objects.get",
        )
        if exists:
            log.info("%s: source gs://%s/%s already staged", context, bucket.name, object_name)
            return
        # A parallel build may stage the same bytes first: its 412 means "already there".
        with contextlib.suppress(api.PreconditionFailed):
            self._retry.call(
                lambda: self._stream(blob, entries),  # a retry packs and sends it again
                context=context,
                api_call="storage.objects.insert",
                passthrough=(api.PreconditionFailed,),
            )

    def _stream(self, blob: Any, entries: list[tuple[str, Path]]) -> None:
        """A resumable upload, `chunk_bytes` at a time: memory stays at about one chunk."""
        with blob.open(
            "wb",
            chunk_size=self._chunk_bytes,
            ignore_flush=True,
            content_type="application/gzip",
            if_generation_match=0,  # content-addressed: never overwrite
            retry=None,
            timeout=self._rpc_timeout,
        ) as out:
            write_tar_gz(entries, out)

    def _source_bucket(self, context: str) -> Any:
        from google.api_core import exceptions as api

        client = self._client()
        name = self._bucket
        if name in self._known_buckets:
            return client.bucket(name)
        try:
            bucket = self._retry.call(
                lambda: client.get_bucket(name, retry=None, timeout=self._rpc_timeout),
                context=context,
                api_call="storage.buckets.get",
                passthrough=(api.NotFound,),
            )
        except api.NotFound:
            raise BackendError(
                f"{context}: the source bucket gs://{name} does not exist: create it "
                f"(`gcloud storage buckets create gs://{name} --location={self._region}`, or "
                "apply terraform/) or configure an existing bucket"
            ) from None
        self._known_buckets.add(name)
        return bucket
