"""Integration fixtures: the Pub/Sub and Firestore emulators."""

from tests.integration.emulators import *  # noqa: F403
