"""GitHub as a place to read architectures and build sources from, over its REST API.

    github://OWNER/REPO/PATH@REF   one file at REF: an architecture (contents API, raw)
    github://OWNER/REPO@REF/DIR    a directory of the tree at REF: build sources

(parsed by `shared.locations`, the one parser of locations).

A tree is downloaded once per commit (the tarball API) into a cache directory and
extracted only after every member was checked: no absolute paths, no `..`, no link
leading out of the tree, no devices, and a cap on size and member count. Refs that are
not commit shas move, so their trees are fetched again each time. The cache is bounded
(`max_cache` bytes): on Cloud Run functions /tmp is memory, so after each download the
trees used least recently are deleted, unpinned ones first, sparing any used in the last
`keep_recent` seconds (a build may still be reading it). The token goes to the
API host only: the tarball endpoint redirects elsewhere, and redirects do not carry it.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from shared.architecture.loading import (
    MAX_ARCHITECTURE_BYTES,
    LoadedArchitecture,
    parse_architecture,
)
from shared.architecture.model import DeploymentSpec
from shared.errors import ArchitectureError, BackendError, Problem
from shared.locations import (
    GITHUB_FIX,
    GITHUB_PREFIX,
    GitHubLocation,
    parse_github_file,
    parse_github_tree,
)

MAX_TARBALL_BYTES = 256 * 1024 * 1024  # compressed, as downloaded
MAX_TREE_BYTES = 1024 * 1024 * 1024  # extracted
MAX_MEMBERS = 100_000
MAX_CACHE_BYTES = 384 * 1024 * 1024  # a third of a 1 GiB worker, whose /tmp is memory
KEEP_RECENT_SECONDS = 900.0  # a tree handed out this recently may still be uploading
_CHUNK = 1024 * 1024
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})


class GitHubClient:
    """The two REST calls archdeploy makes; errors become `BackendError`, `retryable` for
    429, 5xx, rate limits and network failures."""

    def __init__(self, api_url: str, token: str | None = None, *, timeout: float = 30) -> None:
        self.api_url = api_url.rstrip("/")
        self._token = token
        self.timeout = timeout

    def read_file(self, at: GitHubLocation, limit: int) -> bytes:
        """The file's bytes, at most `limit + 1` of them (so the caller can tell it is too big)."""
        path = quote(at.path)
        url = f"{self._repo_url(at)}/contents/{path}?ref={quote(at.ref, safe='')}"
        with self._open(url, "application/vnd.github.raw", f"reading {at.path}") as response:
            data: bytes = response.read(limit + 1)
            return data

    def download_tarball(self, at: GitHubLocation, sink: IO[bytes], limit: int) -> None:
        url = f"{self._repo_url(at)}/tarball/{quote(at.ref, safe='')}"
        what = f"downloading {at.repository}@{at.ref}"
        total = 0
        with self._open(url, "application/vnd.github+json", what) as response:
            while chunk := response.read(_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise BackendError(f"{what}: the tarball is larger than {limit} bytes")
                sink.write(chunk)

    def _repo_url(self, at: GitHubLocation) -> str:
        return f"{self.api_url}/repos/{quote(at.owner)}/{quote(at.repo)}"

    def _open(self, url: str, accept: str, what: str) -> Any:
        request = urllib.request.Request(url, headers={"Accept": accept})
        request.add_header("User-Agent", "archdeploy")
        request.add_header("X-GitHub-Api-Version", "2022-11-28")
        if self._token:
            # Unredirected: the token must not follow the tarball's redirect to another host.
            request.add_unredirected_header("Authorization", f"Bearer {self._token}")
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            with exc:
                raise _http_error(exc, what) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BackendError(f"{what}: GitHub unreachable: {reason}", retryable=True) from None


def _http_error(exc: urllib.error.HTTPError, what: str) -> BackendError:
    status = exc.code
    limited = status == 403 and exc.headers.get("x-ratelimit-remaining") == "0"
    hints = {
        401: "GitHub refused the token: set ARCHDEPLOY_GITHUB_TOKEN to a valid token",
        403: "the token may not read this repository: give it `contents: read`",
        404: "not found: check the repository, path and ref, and for a private "
        "repository that ARCHDEPLOY_GITHUB_TOKEN can read it",
    }
    hint = "rate limited: retried later" if limited else hints.get(status, exc.reason)
    retryable = limited or status in _RETRYABLE
    return BackendError(f"{what}: GitHub answered {status}: {hint}", retryable=retryable)


class GitHubArchitectures:
    """The `ArchitectureReader` for `github://OWNER/REPO/PATH@REF`.

    A missing file or a refused token becomes an `ArchitectureError` (the run is recorded
    as failed, with the fix); a transient failure stays a retryable `BackendError`.
    """

    def __init__(self, client: GitHubClient) -> None:
        self.client = client

    def read(self, uri: str) -> LoadedArchitecture:
        try:
            at = parse_github_file(uri)
            data = self.client.read_file(at, MAX_ARCHITECTURE_BYTES)
        except ValueError as exc:
            raise ArchitectureError([Problem("", str(exc), None, GITHUB_FIX, uri)]) from None
        except BackendError as exc:
            if exc.retryable:
                raise
            fix = "commit the file there, or point ARCHDEPLOY_WEBHOOK_ARCHITECTURE_PATH at it"
            problem = Problem("", f"cannot read the architecture file: {exc}", None, fix, uri)
            raise ArchitectureError([problem]) from None
        return parse_architecture(data, file=uri)


class GitHubSource:
    """`SourceProvider` for `github://` build sources: trees cached under `cache_dir`."""

    def __init__(
        self,
        client: GitHubClient,
        cache_dir: Path,
        *,
        max_download: int = MAX_TARBALL_BYTES,
        max_tree: int = MAX_TREE_BYTES,
        max_members: int = MAX_MEMBERS,
        max_cache: int = MAX_CACHE_BYTES,
        keep_recent: float = KEEP_RECENT_SECONDS,
    ) -> None:
        self.client = client
        self.cache_dir = Path(cache_dir)
        self.limits = (max_download, max_tree, max_members)
        self.max_cache, self.keep_recent = max_cache, keep_recent
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def localize(self, spec: DeploymentSpec) -> DeploymentSpec:
        if not spec.source_path.startswith(GITHUB_PREFIX) and not any(
            source.startswith(GITHUB_PREFIX) for source in spec.config_templates
        ):
            return spec
        templates = {self._local(src): name for src, name in spec.config_templates.items()}
        return spec.model_copy(
            update={"source_path": self._local(spec.source_path), "config_templates": templates}
        )

    def _local(self, source: str) -> str:
        if not source.startswith(GITHUB_PREFIX):
            return source
        try:
            at = parse_github_tree(source)
        except ValueError as exc:
            raise BackendError(f"source {exc}") from None
        root = self._checkout(at).resolve()
        target = (root / at.path).resolve()
        if not target.is_relative_to(root):
            raise BackendError(f"source {source!r} leads out of the repository's tree")
        return str(target)

    def _checkout(self, at: GitHubLocation) -> Path:
        """The extracted tree of `at`'s repository at its ref, downloaded at most once."""
        pinned = bool(_SHA.fullmatch(at.ref))
        name = at.ref if pinned else f"{uuid.uuid4().hex}.unpinned"
        final = self.cache_dir / at.owner / at.repo / name
        with self._guard:
            lock = self._locks.setdefault(f"{at.repository}@{at.ref}", threading.Lock())
        with lock:
            if pinned and final.is_dir():
                os.utime(final)  # recently used: the last to be evicted
                return final
            final.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=final.parent, prefix=".fetch-") as scratch:
                archive, tree = Path(scratch) / "tree.tar.gz", Path(scratch) / "tree"
                with archive.open("wb") as sink:
                    self.client.download_tarball(at, sink, self.limits[0])
                extract_tarball(archive, tree, what=f"{at.repository}@{at.ref}", limits=self.limits)
                with contextlib.suppress(OSError):  # another process may have won the race
                    tree.rename(final)
            if not final.is_dir():
                raise BackendError(f"checking out {at.repository}@{at.ref}: no tree was kept")
        self._evict()
        return final

    def _evict(self) -> None:
        """Delete least recently used trees until the cache fits `max_cache`."""
        trees = [t for t in self.cache_dir.glob("*/*/*") if t.is_dir() and t.name[0] != "."]
        sized = [(t, _size(t), t.stat().st_mtime) for t in trees]
        total = sum(size for _, size, _ in sized)
        fresh = time.time() - self.keep_recent
        # Unpinned trees are never reused: they go first, then the oldest.
        for tree, size, used in sorted(sized, key=lambda x: (x[0].suffix != ".unpinned", x[2])):
            if total <= self.max_cache:
                return
            if used >= fresh:
                continue
            shutil.rmtree(tree, ignore_errors=True)
            total -= size


def _size(tree: Path) -> int:
    return sum(f.stat().st_size for f in tree.rglob("*") if f.is_file() and not f.is_symlink())


def extract_tarball(
    archive: Path,
    dest: Path,
    *,
    what: str,
    limits: tuple[int, int, int] = (MAX_TARBALL_BYTES, MAX_TREE_BYTES, MAX_MEMBERS),
) -> None:
    """Extract a GitHub tarball (one top directory, stripped) into `dest`, refusing it
    whole, before writing anything, if one member is unsafe or the tree is too big."""
    _, max_tree, max_members = limits
    kept: list[tarfile.TarInfo] = []
    total = 0
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if len(kept) >= max_members:
                    raise BackendError(f"refusing the tree of {what}: over {max_members} entries")
                name = _safe_name(member, what)
                total += member.size if member.isfile() else 0
                if total > max_tree:
                    raise BackendError(f"refusing the tree of {what}: over {max_tree} bytes")
                if name:
                    kept.append(member.replace(name=name, linkname=_link(member), deep=False))
            dest.mkdir(parents=True)
            tar.extractall(dest, members=kept, filter="data")
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise BackendError(f"refusing the tree of {what}: {exc}") from None


def _safe_name(member: tarfile.TarInfo, what: str) -> str:
    """The member's path below the top directory; raises if it could escape."""
    raw = member.name
    parts = raw.split("/")
    reason = None
    if raw.startswith("/") or "\\" in raw or "\0" in raw:
        reason = "has an absolute or unusual path"
    elif ".." in parts:
        reason = "climbs out with `..`"
    elif not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        reason = "is a device or a pipe"
    elif member.issym() or member.islnk():
        target = _link(member)
        base = posixpath.dirname("/".join(parts[1:])) if member.issym() else ""
        joined = posixpath.normpath(posixpath.join(base, target))
        if target.startswith("/") or joined == ".." or joined.startswith("../"):
            reason = f"links to {member.linkname!r}, outside the tree"
    if reason:
        raise BackendError(f"refusing the tree of {what}: entry {raw!r} {reason}")
    return posixpath.normpath("/".join(parts[1:])) if len(parts) > 1 and any(parts[1:]) else ""


def _link(member: tarfile.TarInfo) -> str:
    """Hard links name archive paths: strip the top directory as for the names."""
    if member.islnk():
        return member.linkname.partition("/")[2]
    return member.linkname
