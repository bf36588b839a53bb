"""Where an architecture or a service's sources can live, told apart by scheme.

    path/to/file.yaml              a local file (or directory)
    gs://BUCKET/OBJECT             an object in Cloud Storage
    github://OWNER/REPO/PATH@REF   one file of a repository at REF
    github://OWNER/REPO@REF/DIR    a directory of a repository's tree at REF

The one parser of these locations; the core may import it (it imports no adapter).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.errors import UsageError

if TYPE_CHECKING:
    from shared.architecture.loading import LoadedArchitecture
    from shared.ports import ArchitectureReader

GS = "gs"
GITHUB = "github"
SCHEMES = (GS, GITHUB)  # the remote locations; anything without `://` is a local path
GITHUB_PREFIX = f"{GITHUB}://"
LOCATION_FORMS = "a local path, gs://BUCKET/OBJECT or github://OWNER/REPO/PATH@REF"

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_REF = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_./-]{0,254}")
GITHUB_FIX = "write github://OWNER/REPO/PATH@REF for a file, github://OWNER/REPO@REF/DIR for a tree"


def is_remote(location: str) -> bool:
    return "://" in location


def scheme_of(location: str) -> str:
    """`gs`, `github`, ... for a remote location; "" for a local path."""
    return location.partition("://")[0] if is_remote(location) else ""


@dataclass(frozen=True)
class GitHubLocation:
    owner: str
    repo: str
    ref: str
    path: str  # the file, or the directory ("" for the tree's root)

    @property
    def repository(self) -> str:
        return f"{self.owner}/{self.repo}"

    def file_uri(self) -> str:
        return f"{GITHUB_PREFIX}{self.repository}/{self.path}@{self.ref}"

    def tree_uri(self) -> str:
        return f"{GITHUB_PREFIX}{self.repository}@{self.ref}" + (
            f"/{self.path}" if self.path else ""
        )


def parse_github_file(uri: str) -> GitHubLocation:
    """`github://OWNER/REPO/PATH@REF`; raises `ValueError` saying what is wrong."""
    location, _, ref = uri.removeprefix(GITHUB_PREFIX).rpartition("@")
    owner, _, rest = location.partition("/")
    repo, _, path = rest.partition("/")
    return _checked(uri, GitHubLocation(owner, repo, ref, path), file=True)


def parse_github_tree(uri: str) -> GitHubLocation:
    """`github://OWNER/REPO@REF[/DIR]`; raises `ValueError` saying what is wrong."""
    repository, _, rest = uri.removeprefix(GITHUB_PREFIX).partition("@")
    owner, _, repo = repository.partition("/")
    ref, _, path = rest.partition("/")  # so a ref with a slash (`release/1`) cannot be used
    return _checked(uri, GitHubLocation(owner, repo, ref, path), file=False)


def _checked(uri: str, location: GitHubLocation, *, file: bool) -> GitHubLocation:
    path = location.path
    problem = None
    if not uri.startswith(GITHUB_PREFIX):
        problem = "does not start with github://"
    elif not all(_NAME.fullmatch(n) and n.strip(".") for n in (location.owner, location.repo)):
        problem = "does not name a repository as OWNER/REPO"
    elif not _REF.fullmatch(location.ref) or ".." in location.ref:
        problem = "has no valid @REF (a commit sha, branch or tag)"
    elif file and not path:
        problem = "names no file"
    elif path.startswith("/") or ".." in path.split("/") or "\\" in path or "\0" in path:
        problem = "has a path that is absolute or leaves the repository with `..`"
    if problem:
        raise ValueError(f"{uri!r} {problem}: {GITHUB_FIX}")
    return location


class ArchitecturesByScheme:
    """The `ArchitectureReader` that hands each location to the reader of its scheme."""

    def __init__(self, readers: Mapping[str, ArchitectureReader]) -> None:
        self.readers = dict(readers)

    def read(self, uri: str) -> LoadedArchitecture:
        reader = self.readers.get(scheme_of(uri))
        if reader is None:
            raise UsageError(f"cannot read {uri!r}: an architecture location is {LOCATION_FORMS}")
        return reader.read(uri)
