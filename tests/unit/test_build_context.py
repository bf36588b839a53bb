"""One rule for what goes into a build context, locally (OCI images) and on Google Cloud
(source archives): shared.adapters.build_context, on pathspec."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.adapters.build_context import ContextRules
from shared.adapters.gcp.source_archive import source_entries
from shared.adapters.local.oci_images import collect_files

REPO = Path(__file__).resolve().parents[2]

TREE = {
    ".gcloudignore": "#!include:.gitignore\n*.log\n!keep.log\nsecrets/\n!secrets/public.pem\n",
    ".gitignore": "out/\n",
    ".dockerignore": "**/*.tmp\n/docs\n!docs/README.md\n",
    "app.py": "",
    "keep.log": "",
    "pkg/deep.log": "",
    "pkg/keep.log": "",
    "pkg/x.tmp": "",
    "pkg/mod.pyc": "",
    "secrets/key.pem": "",
    "secrets/public.pem": "",
    "docs/guide.md": "",
    "docs/README.md": "",
    "out/artifact": "",
    "nested/docs/kept.md": "",  # /docs is anchored: only the root docs/
    ".venv/bin/python": "",
    ".archdeploy/state.db": "",
}
KEPT = {
    ".dockerignore",
    ".gcloudignore",
    ".gitignore",
    "app.py",
    "keep.log",
    "pkg/keep.log",
    "secrets/public.pem",
    "docs/README.md",
    "nested/docs/kept.md",
}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name, text in TREE.items():
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "src"


def test_local_images_and_cloud_sources_keep_exactly_the_same_files(tree: Path) -> None:
    local = set(collect_files(tree))
    cloud = set(source_entries(tree))
    assert local == cloud == KEPT


def test_re_includes_work_below_excluded_directories_and_the_last_match_wins(tree: Path) -> None:
    rules = ContextRules(tree)
    assert rules.excluded("secrets/key.pem") and not rules.excluded("secrets/public.pem")
    assert rules.excluded("deep/trace.log") and not rules.excluded("deep/keep.log")
    assert not rules.can_prune  # a re-include means no directory can be skipped whole


def test_a_build_directory_dockerignore_is_anchored_to_that_directory(tmp_path: Path) -> None:
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / ".dockerignore").write_text("fixtures\n")
    rules = ContextRules(tmp_path, "svc")
    assert rules.excluded("svc/fixtures/a.json")
    assert not rules.excluded("fixtures/a.json")
    assert not rules.excluded("svc/lib/fixtures/a.json")


def test_a_tree_without_ignore_files_keeps_everything_but_the_skipped_without_pathspec(
    tmp_path: Path,
) -> None:
    # An unchanged `up` hashes every service's tree: without patterns, pathspec (~8 ms to
    # import) is not needed, and the rule is the same.
    for name in ("app.py", "pkg/mod.py", "pkg/mod.pyc", "__pycache__/x.py", "a.log"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from shared.adapters.build_context import ContextRules\n"
        f"root = Path({str(tmp_path)!r})\n"
        "print(sorted(rel for rel, _ in ContextRules(root).walk(root)))\n"
        "print('pathspec' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )

    assert done.stdout.splitlines() == ["['a.log', 'app.py', 'pkg/mod.py']", "False"]
