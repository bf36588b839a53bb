"""A rich `Console` made on first use, so commands that print nothing through rich
(`validate`, `--help`) do not pay for importing it at start-up."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from rich.console import Console


class LazyConsole:
    """Stands for `rich.console.Console(**options)`; the console is made on first use."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


def lazy_console(**options: Any) -> Console:
    """A `Console(**options)` that imports rich only when first used."""
    return cast("Console", LazyConsole(**options))
