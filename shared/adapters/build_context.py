"""What goes into a build context: one rule, for local images and for Cloud Build alike.

Left out: `.git`, `__pycache__`, `.venv` and `.archdeploy` directories anywhere and `*.pyc`
files, plus
- the patterns of the root `.gcloudignore`, or of the root `.gitignore` when there is no
  `.gcloudignore` (what gcloud's generated default does): gitignore rules, so a pattern
  without an inner `/` matches at any depth; `#!include:FILE` pulls in another file's lines;
- the patterns of `.dockerignore` at the root and in the build directory: Docker rules, so
  patterns are anchored to that file's directory (`**/*.log` for any depth).
All patterns apply in that order and the last match wins; `!` re-includes, also below an
excluded directory (as Docker does; gitignore would not). Matching is `pathspec`'s
"gitignore" patterns (pathspec >= 1.0), the same on every machine and in the cloud.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ALWAYS_SKIPPED = frozenset({".git", "__pycache__", ".venv", ".archdeploy"})
SKIPPED_SUFFIXES = (".pyc",)


class ContextRules:
    """The ignore patterns of one source tree (see the module doc)."""

    def __init__(self, root: Path, build_dir: str = "") -> None:
        lines = _gitignore_lines(root)
        lines += _docker_lines(_read_lines(root / ".dockerignore"), base="")
        if build_dir:
            lines += _docker_lines(_read_lines(root / build_dir / ".dockerignore"), base=build_dir)
        self.lines = lines
        # No pattern matches nothing: a tree without ignore files skips importing pathspec
        # (~8 ms of every `up`, see docs/performance.md).
        self._spec: Any = _spec(lines) if lines else None
        # With no re-include, an excluded directory's files are all excluded: skip it whole.
        self.can_prune = not any(line.startswith("!") for line in lines)

    def excluded(self, rel: str, *, is_dir: bool = False) -> bool:
        """Whether the workspace-relative POSIX path `rel` stays out of the context."""
        name = rel.rsplit("/", 1)[-1]
        if (name in ALWAYS_SKIPPED) if is_dir else name.endswith(SKIPPED_SUFFIXES):
            return True
        if self._spec is None:
            return False
        return bool(self._spec.match_file(rel + "/" if is_dir else rel))

    def walk(self, root: Path) -> Iterator[tuple[str, Path]]:
        """(relative path, local path) of every file kept, sorted per directory; a symlink to
        a directory is yielded as an entry, never followed."""
        for dirpath, dirnames, filenames in os.walk(root):
            base = Path(dirpath)
            rel_dir = base.relative_to(root).as_posix()
            prefix = "" if rel_dir == "." else rel_dir + "/"
            kept = []
            for name in sorted(dirnames):
                rel = prefix + name
                if name in ALWAYS_SKIPPED or (self.can_prune and self.excluded(rel, is_dir=True)):
                    continue
                if (base / name).is_symlink():
                    if not self.excluded(rel):
                        yield rel, base / name
                    continue
                kept.append(name)
            dirnames[:] = kept  # pruned in place: ignored trees are never listed
            for name in sorted(filenames):
                if not self.excluded(prefix + name):
                    yield prefix + name, base / name


def _spec(lines: list[str]) -> Any:
    import pathspec

    return pathspec.PathSpec.from_lines("gitignore", lines)


def _gitignore_lines(root: Path) -> list[str]:
    gcloudignore = root / ".gcloudignore"
    path = gcloudignore if gcloudignore.is_file() else root / ".gitignore"
    lines: list[str] = []
    for line in _read_lines(path):
        if line.startswith("#!include:"):
            lines += _read_lines(root / line.removeprefix("#!include:").strip())
        else:
            lines.append(line)
    return lines


def _docker_lines(lines: Iterable[str], *, base: str) -> list[str]:
    """Docker patterns as gitignore-pattern lines anchored to `base` (the file's directory)."""
    out = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = (line[1:] if negate else line).strip().lstrip("/")
        if not pattern.strip("/"):
            continue
        anchored = f"/{base}/{pattern}" if base else f"/{pattern}"
        out.append(("!" if negate else "") + anchored)
    return out


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
