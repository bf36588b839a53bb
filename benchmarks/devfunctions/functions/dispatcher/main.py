"""The real dispatcher, unchanged: every public name of functions/dispatcher/main.py."""

from __future__ import annotations

from load import real_function

globals().update(
    {k: v for k, v in vars(real_function("dispatcher")).items() if not k.startswith("_")}
)
