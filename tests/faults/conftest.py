"""Fault-injection fixtures: the seed, the session's tally (printed as a table at the
end of the session, the seed even when no run got to start). The emulators come from
tests/conftest.py."""

from __future__ import annotations

import pytest

from tests.faults.tally import Tally, suite_seed

TALLY = pytest.StashKey[Tally]()


@pytest.fixture(scope="session")
def tally(request: pytest.FixtureRequest) -> Tally:
    """The session's tally; its seed drives every scenario."""
    stash = request.config.stash
    if TALLY not in stash:
        seed, origin = suite_seed()
        stash[TALLY] = Tally(seed=seed, origin=origin)
    return stash[TALLY]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    tally = config.stash.get(TALLY, None)
    if tally is None:
        return
    terminalreporter.write_sep("=", "fault injection")
    for line in tally.lines() if tally.runs else tally.lines()[:1]:
        terminalreporter.write_line(line)
