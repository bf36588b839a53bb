"""Integration fixtures: the Pub/Sub and Firestore emulators, the fake Google APIs."""

from tests.fakes_google.fixtures import *  # noqa: F403
from tests.integration.emulators import *  # noqa: F403
