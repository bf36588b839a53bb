"""Symbolic links in a service's source tree may point inside it, never out of it.

A link such as `svc/passwd.txt -> /etc/passwd` would otherwise put the target's bytes in
the image, beside the running service. The GitHub tarball reader refuses such links
(`shared.adapters.github_source`); these functions give validation and the local image
builder the same rule. A link that resolves inside the tree stays allowed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from shared.errors import BackendError

# Never imaged, so never checked (the local builder's ALWAYS_IGNORED directories).
SKIPPED_DIRS = frozenset({".git", "__pycache__", ".venv", ".archdeploy"})
FIX = "replace the link with a copy of the file, or point it at a file inside the source tree"


def link_leaving(root: Path, path: Path) -> str | None:
    """Where `path` leads when it (or a directory on its way from `root`) is a symbolic
    link resolving outside `root`; None when it stays inside or links nothing."""
    try:
        inside = path.resolve(strict=False).is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a loop of links
        return f"{os.readlink(path)} (a loop of links)" if path.is_symlink() else "(a loop)"
    if inside:
        return None
    return str(path.resolve(strict=False))


def links_leaving(root: Path, files: Iterable[tuple[str, Path]] | None = None) -> list[str]:
    """`link -> target` for each file under `root` whose link leads out of it, sorted.

    `files` (relative name, path) defaults to every file under `root`, not following
    linked directories, skipping SKIPPED_DIRS."""
    found = []
    for rel, path in _walk(root) if files is None else files:
        target = link_leaving(root, path)
        if target is not None:
            found.append(f"{rel} -> {target}")
    return sorted(found)


def refuse_links_leaving(root: Path, files: Mapping[str, Path]) -> None:
    """Raise BackendError (not retryable) naming every link in `files` that leaves `root`."""
    found = links_leaving(root, files.items())
    if found:
        raise BackendError(
            f"symbolic links in {root} lead outside it: {', '.join(found)}: {FIX}",
            retryable=False,
        )


def _walk(root: Path) -> Iterable[tuple[str, Path]]:
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        prefix = "" if base == root else base.relative_to(root).as_posix() + "/"
        dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS]
        for name in [*filenames, *(d for d in dirnames if (base / d).is_symlink())]:
            if (base / name).is_symlink():
                yield prefix + name, base / name
