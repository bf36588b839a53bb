"""Integration fixtures: the Pub/Sub and Firestore emulators."""

from tests.integration.emulators import *  # noqa: F403
from tests.fakes_google.fixtures import *  # noqa: F403
