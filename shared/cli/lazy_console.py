"""A rich `Console` made on first use, so commands that print nothing through rich
(`validate`, `--help`) do not pay for importing it at start-up; and plain text where no
terminal reads it.

Where the stream is not a terminal (a pipe, a file, a CI log), a line printed with
`markup=False, soft_wrap=True` (what `up` says while it runs) is written as it is: rich
would write the same characters, after importing itself (~20 ms) and building a console.
Everything else goes to rich.
"""

from __future__ import annotations

import os
import re
import sys
from typing import IO, TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from rich.console import Console

# What rich's `Text` strips from printed text (rich.control.strip_control_codes).
_CONTROL_CODES = dict.fromkeys((7, 8, 11, 12, 13))
# Text rich would change even with markup off: a possible `:emoji_code:` (rich's own
# pattern, rich._emoji_replace) or a tab (expanded by cell width). Such lines go to rich.
# A pattern, not a compiled one: `re` compiles it (and caches it) at the first line
# written, so a command that writes nothing here (`validate` of a good file) never does.
_RICH_REWRITES = r"(:(\S*?)(?:(?:\-)(emoji|text))?:)|\t"


def is_terminal(stream: IO[str]) -> bool:
    """Whether rich would treat `stream` as a terminal (rich.console.Console.is_terminal:
    `TTY_COMPATIBLE`, then `FORCE_COLOR`, then `isatty()`), without importing rich."""
    tty_compatible = os.environ.get("TTY_COMPATIBLE", "")
    if tty_compatible in ("0", "1"):
        return tty_compatible == "1"
    force_color = os.environ.get("FORCE_COLOR")
    if force_color is not None:
        return force_color != ""
    isatty = getattr(stream, "isatty", None)
    try:
        return False if isatty is None else bool(isatty())
    except ValueError:  # a closed stream
        return False


def plain_text(text: str) -> str:
    """`text` as rich writes it with markup off to a stream that is not a terminal."""
    return text.translate(_CONTROL_CODES)


class LazyConsole:
    """Stands for `rich.console.Console(**options)`; the console is made on first use."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Any = None

    def print(self, *objects: Any, **options: Any) -> None:
        if self._console is None and self._plain(objects, options):
            stream = self._stream()
            stream.write(plain_text(str(objects[0])) + "\n")
            stream.flush()
            return
        self.__getattr__("print")(*objects, **options)

    def _stream(self) -> IO[str]:
        # Looked up at each call, as rich does: tests and `--json` swap sys.stdout/stderr.
        file = self._options.get("file")
        if file is not None:
            return cast("IO[str]", file)
        return sys.stderr if self._options.get("stderr") else sys.stdout

    def _plain(self, objects: tuple[Any, ...], options: dict[str, Any]) -> bool:
        return (
            len(objects) == 1
            and isinstance(objects[0], str)
            and not re.search(_RICH_REWRITES, objects[0])
            and options.get("markup") is False
            and options.get("soft_wrap") is True
            and set(options) <= {"markup", "soft_wrap", "highlight"}
            and not is_terminal(self._stream())
        )

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


def lazy_console(**options: Any) -> Console:
    """A `Console(**options)` that imports rich only when first used."""
    return cast("Console", LazyConsole(**options))
