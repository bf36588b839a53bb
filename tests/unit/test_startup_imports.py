"""Start-up stays light: what a command or a function imports is pinned by module names
(sys.modules), not by wall-clock time, so a heavy import creeping back fails here on any
machine. docs/performance.md has the timings these guard."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The pydantic messages and the runtime: `validate` and `--help` use neither.
HEAVY = ("shared.messages", "shared.core", "shared.bootstrap", "shared.settings", "rich")
# Small, but a file that validates needs none of them: `difflib` (a "did you mean" for an
# unknown key, service or environment), `signal` and `fcntl` (`up`, `dev`, `ui`), and the
# modules of the commands defined outside `shared.cli.main`, and `json` (a JSON
# architecture, `schema`, `--json` output, the functions' log lines).
ON_DEMAND = frozenset(
    {"difflib", "signal", "fcntl", "json", "shared.cli.dev", "shared.cli.release", "shared.cli.ui"}
)


def loaded_after(code: str, cwd: Path = REPO) -> set[str]:
    # The module names are taken before `json` is imported to print them.
    probe = (
        f"{code}\nimport sys\nloaded = sorted(sys.modules)\nimport json\nprint(json.dumps(loaded))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, check=True
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def heavy(modules: set[str], prefixes: tuple[str, ...] = HEAVY) -> list[str]:
    return sorted(m for m in modules if m.startswith(prefixes) and m.split(".")[0] != "")


def test_importing_the_cli_loads_neither_pydantic_nor_rich_nor_the_core() -> None:
    modules = loaded_after("import shared.cli.main")

    assert heavy(modules, (*HEAVY, "pydantic", "shared.architecture")) == []


def test_validate_loads_the_architecture_model_but_not_the_messages_or_the_core() -> None:
    code = (
        "import sys\n"
        "from shared.cli.main import cli\n"
        "try:\n"
        "    cli.main(['validate', 'examples/architecture.yaml'], prog_name='archdeploy')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
    )
    modules = loaded_after(code)

    assert "shared.architecture.model" in modules  # it did validate
    assert heavy(modules) == []
    # Each wanted only on an error path ("did you mean") or by another command.
    assert sorted(modules & ON_DEMAND) == []


@pytest.mark.parametrize("name", ["dispatcher", "worker", "aggregator"], ids=str)
def test_a_function_imports_nothing_of_ours_until_its_first_event(name: str) -> None:
    where = REPO / "functions" / name
    floor = loaded_after("import functions_framework", cwd=where)

    over_floor = loaded_after("import main", cwd=where) - floor

    assert heavy(over_floor, ("pydantic", "shared", "google", "yaml")) == []


def test_no_model_field_takes_a_builtin_as_its_default_factory() -> None:
    # pydantic inspects each factory's signature; for `list` that parses a text signature
    # with tokenize (~0.1-2 ms a field at import). A Python function costs microseconds.
    code = (
        "from pydantic import BaseModel\n"
        "import shared.architecture.model as a, shared.messages as m\n"
        "slow = [f'{c.__name__}.{n}' for mod in (a, m) for c in vars(mod).values()\n"
        "        if isinstance(c, type) and issubclass(c, BaseModel)\n"
        "        for n, f in c.model_fields.items() if f.default_factory in (list, set)]\n"
        "assert slow == [], slow\n"
    )

    loaded_after(code)


def test_help_lists_the_commands_defined_elsewhere_in_order_and_each_runs() -> None:
    from click.testing import CliRunner

    from shared.cli.main import cli

    listed = CliRunner().invoke(cli, ["--help"])
    names = [line.split()[0] for line in listed.output.split("Commands:")[1].splitlines() if line]

    assert listed.exit_code == 0
    assert names == sorted(names) and {"dev", "rollback", "ui"} <= set(names)
    for name in ("dev", "rollback", "ui"):
        own = CliRunner().invoke(cli, [name, "--help"])
        assert own.exit_code == 0 and f"Usage: cli {name} [OPTIONS]" in own.output
