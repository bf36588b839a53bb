"""`make test` installs exactly what uv.lock says: nothing more, nothing else."""

from __future__ import annotations

from importlib import metadata

from tests.lockfile import locked_versions, normalized


def test_every_installed_distribution_is_the_locked_version() -> None:
    locked = locked_versions()
    installed = {normalized(d.metadata["Name"]): d.version for d in metadata.distributions()}

    assert installed.pop("archdeploy") == locked.pop("archdeploy")
    unlocked = sorted(set(installed) - set(locked))
    assert not unlocked, f"installed but not in uv.lock: {unlocked} (install with `make`)"
    drifted = {n: (v, locked[n]) for n, v in installed.items() if locked[n] != v}
    assert not drifted, f"installed (version, locked version): {drifted}"
    # Only platform-specific packages (colorama on Windows, ...) may be locked and absent.
    assert len(installed) >= len(locked) - 5
