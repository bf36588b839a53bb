"""Integration fixtures: the fake Google APIs (the emulators are in tests/conftest.py)."""

from tests.fakes_google.fixtures import *  # noqa: F403
