"""Every test starts from the same environment and logging setup, and leaves them so;
the emulator fixtures are shared by every suite."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

# One pair of Pub/Sub and Firestore emulators for the whole session (integration and
# fault-injection suites alike): session fixtures, started only if a test asks.
from tests.integration.emulators import *  # noqa: F403


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    logger = logging.getLogger("shared")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate
