"""The dispatcher function's runtime, built afresh from the environment a test set."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from shared import bootstrap
from shared.core.runtime import Runtime


def fresh_dispatcher_runtime() -> Iterator[Runtime]:
    """Yield the runtime the dispatcher function will use, recording what it publishes;
    close it and forget the cached settings afterwards."""
    bootstrap.function_settings.cache_clear()
    bootstrap.for_function.cache_clear()
    runtime = bootstrap.for_function("dispatcher")
    runtime.bus.record = True  # type: ignore[attr-defined]
    logging.getLogger("shared").propagate = True  # so caplog sees what the function logs
    yield runtime
    runtime.bus.close()  # type: ignore[attr-defined]
    runtime.store.close()  # type: ignore[attr-defined]
    bootstrap.function_settings.cache_clear()
    bootstrap.for_function.cache_clear()
