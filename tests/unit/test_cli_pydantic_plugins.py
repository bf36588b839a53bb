"""`validate` runs without pydantic plugins, and so without importing `importlib.metadata`
(shared.cli.process `plugins_off`), unless the user set `PYDANTIC_DISABLE_PLUGINS`; every
other command, and the CLI used in-process, keeps the plugins. A real plugin, installed
the way pydantic finds one (a distribution's `pydantic` entry point), is the witness."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = str(REPO / "examples" / "architecture.yaml")
OK = f"{EXAMPLE}: ok (4 services in 2 dataflows, 0 warnings)\n"

PLUGIN = """
import sys

class Plugin:
    def new_schema_validator(self, schema, schema_type, path, kind, config, settings):
        sys.stderr.write(f"plugin saw {path.name}\\n")
        return None, None, None

plugin = Plugin()
"""
# Run as the installed command runs (`main()`); the exit handler reports what was imported.
PROBE = """
import atexit, sys
atexit.register(lambda: sys.stderr.write(
    f"metadata imported: {{'importlib.metadata' in sys.modules}}\\n"))
{before}
import shared.cli.main as entry
sys.argv = ["archdeploy", *{args!r}]
entry.main()
"""


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    """A folder holding an installed pydantic plugin: its module and its distribution."""
    (tmp_path / "probe_plugin.py").write_text(PLUGIN)
    info = tmp_path / "probe_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: probe-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pydantic]\nprobe = probe_plugin:plugin\n")
    return tmp_path


def run_main(
    plugins: Path, *args: str, switch: str | None = None, before: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(plugins)])
    if switch is not None:
        env["PYDANTIC_DISABLE_PLUGINS"] = switch
    code = PROBE.format(args=list(args), before=before)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_the_witness_plugin_is_found_where_plugins_are_on(plugin_dir: Path) -> None:
    # Without this, the tests below that see no plugin would prove nothing.
    done = run_main(plugin_dir, "schema")

    assert done.returncode == 0, done.stderr
    assert "plugin saw Architecture" in done.stderr
    assert "metadata imported: True" in done.stderr


def test_validate_builds_its_models_without_plugins_and_without_importlib_metadata(
    plugin_dir: Path,
) -> None:
    done = run_main(plugin_dir, "validate", EXAMPLE)

    assert done.returncode == 0, done.stderr
    assert done.stdout == OK
    assert "plugin saw" not in done.stderr
    assert "metadata imported: False" in done.stderr


def test_a_failed_validate_reports_the_same_without_plugins(
    plugin_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "services.yaml"
    bad.write_text("project_id: p\ndataflows: {flow: {services: {api: {dependencies: 3}}}}\n")

    off = run_main(plugin_dir, "validate", str(bad))
    on = run_main(plugin_dir, "validate", str(bad), switch="")

    assert off.returncode == on.returncode == 2
    assert off.stdout == on.stdout
    assert "dependencies" in off.stderr and "Traceback" not in off.stderr
    assert "plugin saw" in on.stderr and "plugin saw" not in off.stderr
    strip = "".join(line for line in on.stderr.splitlines(True) if "plugin saw" not in line)
    assert strip.replace("metadata imported: True", "") == off.stderr.replace(
        "metadata imported: False", ""
    )


@pytest.mark.parametrize("switch", ["", "some_other_plugin"], ids=["empty", "other-name"])
def test_a_user_setting_keeps_the_plugins_it_does_not_name(plugin_dir: Path, switch: str) -> None:
    done = run_main(plugin_dir, "validate", EXAMPLE, switch=switch)

    assert done.returncode == 0, done.stderr
    assert done.stdout == OK
    assert "plugin saw Architecture" in done.stderr


@pytest.mark.parametrize("switch", ["probe", "__all__", "1", "true"])
def test_a_user_setting_that_names_the_plugin_keeps_it_off(plugin_dir: Path, switch: str) -> None:
    done = run_main(plugin_dir, "validate", EXAMPLE, switch=switch)

    assert done.returncode == 0, done.stderr
    assert "plugin saw" not in done.stderr


def test_the_loader_stand_in_gives_way_to_the_real_loader_when_asked(plugin_dir: Path) -> None:
    # Anything but `get_plugins()` while all plugins are off, or `get_plugins()` once the
    # switch is turned back on, is the real loader's answer.
    check = (
        "from shared.cli import process\n"
        "process.start(); process.command_chosen('validate')\n"
        "import os, pydantic\n"
        "class Early(pydantic.BaseModel):\n"
        "    a: int = 0\n"
        "assert Early(a=1).a == 1\n"
        "assert 'importlib.metadata' not in sys.modules\n"
        "import pydantic.plugin._loader as loader\n"
        "assert loader.PYDANTIC_ENTRY_POINT_GROUP == 'pydantic'  # the real module's\n"
        "assert type(sys.modules['pydantic.plugin._loader']).__name__ == 'module'\n"
        "assert list(loader.get_plugins()) == []  # the switch is still off\n"
        "os.environ['PYDANTIC_DISABLE_PLUGINS'] = ''\n"
        "class Late(pydantic.BaseModel):\n"
        "    b: int = 0\n"
        "assert Late(b=2).b == 2\n"
        "sys.exit(0)\n"
    )

    done = run_main(plugin_dir, "--help", before=check)

    assert done.returncode == 0, done.stderr
    assert "plugin saw Late" in done.stderr and "plugin saw Early" not in done.stderr


def test_the_cli_used_in_process_keeps_the_plugins(plugin_dir: Path) -> None:
    in_process = (
        "from shared.cli.main import cli\n"
        "try:\n"
        f"    cli.main(['validate', {EXAMPLE!r}], prog_name='archdeploy')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "assert 'PYDANTIC_DISABLE_PLUGINS' not in os.environ\n"
        "sys.exit(0)\n"
    )

    done = run_main(plugin_dir, "--help", before="import os\n" + in_process)

    assert done.returncode == 0, done.stderr
    assert "plugin saw Architecture" in done.stderr
