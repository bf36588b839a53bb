"""Input digests: what a build reads, hashed, so that an unchanged input is built once.

A service's build input is the tree its builder sees (workspace-relative paths, contents
and executable bits, after the ignore files and with the config templates in place) plus
the builder: which one, its version, and where it puts the image. Equal digests mean
equal builds, so the image built from one input can be reused for the next (skaffold's
`tag/input_digest.go`, extended to the builder). Neither mtimes nor where the tree lives
take part: a fresh checkout of the same commit hits the cache.

`BUILDER_VERSION` is part of every digest. Bump it when what archdeploy feeds a builder
changes in a way the tree does not show (a new build step, other image defaults): every
cached image is then built again once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

BUILDER_VERSION = "1"


def input_digest(files: Mapping[str, Path], *, builder: str, links: bool = False) -> str:
    """sha256 hex of `files` (build-context path -> file) and `builder`.

    `links=True` hashes a symlink as its target path, as an archive that stores links
    does; otherwise a symlink is hashed as the content it points to, as a copy would be.

    Raises:
        OSError: a file cannot be read.
    """
    sha = hashlib.sha256()
    sha.update(_line(["archdeploy-build-input", BUILDER_VERSION, builder]))
    # Sorted: the digest must not depend on the order the file system lists entries in.
    for name in sorted(files):
        sha.update(_line([name, *_describe(files[name], links)]))
    return sha.hexdigest()


def _describe(path: Path, links: bool) -> tuple[str, str]:
    if links and path.is_symlink():
        return "link", os.readlink(path)
    mode = "755" if path.stat().st_mode & 0o111 else "644"
    with path.open("rb") as handle:
        return mode, hashlib.file_digest(handle, "sha256").hexdigest()


def _line(fields: list[str]) -> bytes:
    # JSON keeps names holding newlines or quotes from running into each other.
    return json.dumps(fields, ensure_ascii=False).encode() + b"\n"
