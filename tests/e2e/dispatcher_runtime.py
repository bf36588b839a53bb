"""The dispatcher function's runtime, built afresh from the environment a test set."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from shared.core.runtime import Runtime
from shared.doors import pubsub


def fresh_dispatcher_runtime() -> Iterator[Runtime]:
    """Yield the runtime the dispatcher function will use, recording what it publishes;
    close it and forget the cached settings afterwards."""
    pubsub.settings.cache_clear()
    pubsub.runtime.cache_clear()
    runtime = pubsub.runtime("dispatcher")
    runtime.bus.record = True  # type: ignore[attr-defined]
    logging.getLogger("shared").propagate = True  # so caplog sees what the function logs
    yield runtime
    runtime.bus.close()  # type: ignore[attr-defined]
    runtime.store.close()  # type: ignore[attr-defined]
    pubsub.settings.cache_clear()
    pubsub.runtime.cache_clear()
