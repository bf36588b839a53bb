"""The real aggregator, unchanged: every public name of functions/aggregator/main.py."""

from __future__ import annotations

from load import real_function

globals().update(
    {k: v for k, v in vars(real_function("aggregator")).items() if not k.startswith("_")}
)
