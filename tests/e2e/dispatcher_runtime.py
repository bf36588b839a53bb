"""The dispatcher function's runtime, built afresh from the environment a test set."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from shared.core.runtime import Runtime
from shared.doors import function_runtime


def fresh_dispatcher_runtime() -> Iterator[Runtime]:
    """Yield the runtime the dispatcher function will use, recording what it publishes;
    close it and forget the cached settings afterwards."""
    function_runtime.settings.cache_clear()
    function_runtime.runtime.cache_clear()
    runtime = function_runtime.runtime("dispatcher")
    runtime.bus.record = True  # type: ignore[attr-defined]
    logging.getLogger("shared").propagate = True  # so caplog sees what the function logs
    yield runtime
    runtime.bus.close()  # type: ignore[attr-defined]
    runtime.store.close()  # type: ignore[attr-defined]
    function_runtime.settings.cache_clear()
    function_runtime.runtime.cache_clear()
