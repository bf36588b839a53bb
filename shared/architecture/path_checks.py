"""The source path checks: every path the file names stays inside the architecture file's
directory tree, exists (when asked), and holds no symbolic link leading out of it."""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from shared.architecture.model import DeploymentSpec
from shared.architecture.yaml_source import FieldPath

if TYPE_CHECKING:
    from shared.architecture.checks import Report

_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def shown(value: str) -> str:
    """A value as quoted in a message: cut short when long."""
    return value if len(value) <= 60 else value[:57] + "..."


def check_paths(deployment: DeploymentSpec, path: FieldPath, report: Report) -> None:
    # Remote sources (gs://, github://) are fetched by the source adapters, not read here.
    source = "" if _URI.match(deployment.source_path) else deployment.source_path
    if source and _check_inside(source, (*path, "source_path"), report):
        _check_exists(source, (*path, "source_path"), report, directory=True)
        _check_links(source, (*path, "source_path"), report)
    if deployment.buildable_module_path:
        module = os.path.join(source or ".", deployment.buildable_module_path)
        _check_inside(module, (*path, "buildable_module_path"), report)
    for template, target in deployment.config_templates.items():
        at = (*path, "config_templates", template)
        if not _URI.match(template) and _check_inside(template, at, report):
            _check_exists(template, at, report, directory=False)
        if not target or os.path.isabs(target) or ".." in re.split(r"[/\\]", target):
            message = (
                f"template target `{shown(target)}` must be a file name inside the build directory"
            )
            report.error(at, message, "write it relative, without `..`: e.g. `config/app.yaml`")


def _check_inside(relative: str, path: FieldPath, report: Report) -> bool:
    reason = _escape(relative, report)
    if reason is not None:
        fix = "keep source files inside the architecture file's directory, relative to it"
        report.error(path, f"`{shown(relative)}` {reason}", fix)
    return reason is None


def _escape(relative: str, report: Report) -> str | None:
    """Why `relative` leads outside the report's `base_dir`, or None when it stays inside."""
    base_dir = report.base_dir
    if "\0" in relative:
        return "contains a NUL character"
    if os.path.isabs(relative) and base_dir is None:
        return "is absolute, and this architecture has no directory to check it against"
    normal = os.path.normpath(relative)
    if normal == os.pardir or normal.startswith(os.pardir + os.sep):
        return "leads out of the architecture file's directory with `..`"
    if base_dir is None:
        return None
    try:
        base = str(report.resolved_base or base_dir.resolve())
        # The path the plan joins and the build reads: `..` applied to the text first
        # (plan._join). Resolving `link/../d` as the kernel would checks `link`'s
        # parent's `d`, while the build reads the root's `d`, which may lead out.
        target = _resolved_under(os.path.join(base, normal), report.resolved_dirs)
    except (OSError, RuntimeError, ValueError):
        return "cannot be resolved (a loop of symbolic links?)"
    inside = target == base or target.startswith(base.rstrip(os.sep) + os.sep)
    return None if inside else f"resolves to {target}, outside {base}"


def _resolved(path: str) -> str:
    """`Path(path).resolve()` as a string, without pathlib's parsing of every step (a
    third of a 1,000-service check): links resolved, a link loop a RuntimeError."""
    return _checked_loop(os.path.realpath(path))


def _resolved_under(path: str, dirs: dict[str, str]) -> str:
    """`_resolved(path)`, its directory resolved once per check (`dirs`): 1,000 services
    under `services/` then cost one `lstat` each, not one per step of the path. A name
    that is no link adds itself to its resolved directory; a link is resolved whole."""
    head, name = os.path.split(path)
    if name in ("", os.curdir, os.pardir):
        return _resolved(path)
    parent = dirs.get(head)
    if parent is None:
        parent = dirs[head] = os.path.realpath(head)
    target = os.path.join(parent, name)
    try:
        link = stat.S_ISLNK(os.lstat(target).st_mode)
    except OSError:
        link = False  # not there (or a loop above it, which `_resolved` reports)
    return _resolved(target) if link else _checked_loop(target)


def _checked_loop(target: str) -> str:
    """`target`, or a RuntimeError when reaching it loops through links (as `resolve`)."""
    try:
        os.stat(target)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RuntimeError(f"symlink loop from {target!r}") from exc
    return target


def _planned(relative: str, report: Report) -> Path:
    """The path the plan joins and the build reads: `..` applied to the text first."""
    return (report.base_dir or Path.cwd()) / os.path.normpath(relative)


def _check_exists(relative: str, path: FieldPath, report: Report, *, directory: bool) -> None:
    if not report.check_paths_exist:
        return
    target = _planned(relative, report)
    try:
        target = target.resolve()
        found = target.is_dir() if directory else target.is_file()
    except (OSError, RuntimeError, ValueError):
        found = False
    if not found:
        what = "directory" if directory else "file"
        fix = "correct the path: relative paths start at the architecture file's directory"
        report.error(path, f"{what} {target} does not exist", fix)


def _check_links(relative: str, path: FieldPath, report: Report) -> None:
    """Links out of the source tree would put the files they lead to in the image."""
    from shared.architecture.source_links import FIX, links_leaving

    if not report.check_paths_exist:
        return
    root = _planned(relative, report)
    if not root.is_dir():
        return
    for link in links_leaving(root.resolve()):
        report.error(path, f"symbolic link {link} leads outside the source tree {root}", FIX)
