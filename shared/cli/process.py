"""How an `archdeploy` process starts and ends: four costs that are not the work.

- **The collector waits for the command.** Start-up imports ~300 modules (pydantic above
  all) whose objects live as long as the process; with the cyclic garbage collector on,
  it walks them ~70 times before `validate` has read its file (~10 ms of ~0.18 s). So
  `main()` pauses it, and the root command resumes it once the subcommand is known,
  unless that subcommand is short-lived.
- **Some commands end their process at once.** The interpreter's teardown frees
  each of those objects one by one and collects once more (~25-30 ms, more than validating
  the example). After a command in `ENDS_AT_ONCE` (a short-lived one, which starts no
  thread and leaves no file, connection or child to close, or `up`, which closes what it
  opened before it returns), the process flushes the standard
  streams, runs the exit handlers (logging's flush among them) and calls `os._exit`
  with the command's exit code. Should a thread be running after all, or stdout fail to
  flush, the process ends the ordinary way, exactly as before.
- **A short-lived command runs without pydantic plugins**, unless the user set
  `PYDANTIC_DISABLE_PLUGINS` (an explicit setting wins, whatever its value). pydantic finds
  plugins by scanning every installed distribution's entry points the first time a model
  is built, and its loader imports `importlib.metadata` to do it (~12 ms of imports plus
  ~5 ms of scan, ~10 % of `validate`). A plugin (logfire's, for one) observes the
  validation of models; in `validate` those are archdeploy's own, in a process that starts
  no other. So the process sets `PYDANTIC_DISABLE_PLUGINS=__all__`, pydantic's own
  switch, and while every plugin is off by that switch a stand-in for the loader answers
  "no plugins" as the loader would, without the import (`_NoPluginLoader`).
- **A run's collections skip what start-up built.** The ~300 modules' objects live as long
  as the process, yet each full collection during a run walks them again (~13 ms each,
  15-45 ms per capped run of 300 services). So when `up` starts its run, `run_starts`
  moves every object alive then out of the collector's sight (`gc.freeze`, made for
  this); the collections the run triggers walk only what the run made.

Only `shared.cli.main.main()` (the installed command, `python -m shared.cli.main`) does
any of this: `cli` invoked in-process (CliRunner, tests, an embedding program) leaves the
collector, the interpreter and the plugins alone. docs/performance.md ("Issue 19:
`validate`, fourth look", "Issue 19: validate, fifth look") has the measurements.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import os
import sys
import threading
import types
from collections.abc import Iterable
from typing import Any, NoReturn

# Commands whose work is bounded by their input and that start no thread, open no store
# and leave nothing behind to close when they return.
SHORT_LIVED = frozenset({"validate"})
# Commands that close what they open before they return (`up` closes its bus, joining its
# threads, and its store in a `finally`), so the teardown has only memory left to free:
# ~35 ms of an unchanged second `up` (docs/performance.md, "Issue 19: the final run").
# The collector runs as usual during them.
ENDS_AT_ONCE = SHORT_LIVED | {"up"}

_state = {"owned": False, "short_lived": False, "ends_at_once": False}

# pydantic's switch and the values with which its loader returns no plugin at all.
PLUGINS_SWITCH = "PYDANTIC_DISABLE_PLUGINS"
ALL_PLUGINS_OFF = ("__all__", "1", "true")
PLUGIN_LOADER = "pydantic.plugin._loader"


def start() -> None:
    """This process is archdeploy's own (`main()`): pause the collector for start-up."""
    _state["owned"] = True
    gc.disable()


def command_chosen(name: str | None) -> None:
    """The subcommand is known: resume the collector, unless it is short-lived (then
    pydantic plugins are off instead)."""
    if not _state["owned"]:
        return
    _state["short_lived"] = name in SHORT_LIVED
    _state["ends_at_once"] = name in ENDS_AT_ONCE
    if _state["short_lived"]:
        plugins_off()
    else:
        gc.enable()


def run_starts() -> None:
    """`up` is about to start its run in this process: freeze what is alive (the module
    docstring says why). Nothing when the CLI runs in-process (tests, an embedding
    program): their objects are theirs to collect."""
    if _state["owned"]:
        gc.freeze()


def plugins_off() -> None:
    """No pydantic plugin in this process, unless the user set `PYDANTIC_DISABLE_PLUGINS`;
    while all are off, pydantic's loader is not imported (the module docstring says why)."""
    if os.environ.setdefault(PLUGINS_SWITCH, "__all__") in ALL_PLUGINS_OFF:
        sys.modules.setdefault(PLUGIN_LOADER, _NoPluginLoader(PLUGIN_LOADER))


class _NoPluginLoader(types.ModuleType):
    """Stands in for `pydantic.plugin._loader`: `get_plugins()` returns () as long as the
    switch turns every plugin off, as the loader does; anything else, or a switch turned
    back on, imports the real loader and is its answer."""

    def get_plugins(self) -> Iterable[Any]:
        if os.environ.get(PLUGINS_SWITCH) in ALL_PLUGINS_OFF:
            return ()
        return self._real().get_plugins()  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # the import system probing a module (`__path__`, ...)
            raise AttributeError(name)
        return getattr(self._real(), name)

    def _real(self) -> types.ModuleType:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return importlib.import_module(self.__name__)


def end(code: int) -> NoReturn:
    """End the process with `code`: at once after a command in `ENDS_AT_ONCE` that left
    no thread running, else as usual."""
    if _state["ends_at_once"] and threading.active_count() == 1:
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            raise SystemExit(code) from None  # the interpreter reports it, as it always did
        atexit._run_exitfuncs()
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code) from None
