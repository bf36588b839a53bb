"""`make test` installs exactly what uv.lock says: nothing more, nothing else."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_installed_distribution_is_the_locked_version() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {_normalized(p["name"]): p["version"] for p in lock["package"] if "version" in p}
    installed = {_normalized(d.metadata["Name"]): d.version for d in metadata.distributions()}

    assert installed.pop("archdeploy") == locked.pop("archdeploy")
    unlocked = sorted(set(installed) - set(locked))
    assert not unlocked, f"installed but not in uv.lock: {unlocked} (install with `make`)"
    drifted = {n: (v, locked[n]) for n, v in installed.items() if locked[n] != v}
    assert not drifted, f"installed (version, locked version): {drifted}"
    # Only platform-specific packages (colorama on Windows, ...) may be locked and absent.
    assert len(installed) >= len(locked) - 5
