"""Percentiles and small summaries."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q`-th percentile (0-100), nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def p50_p99(values: Sequence[float]) -> dict[str, float | None]:
    """Milliseconds, rounded: {"p50": ..., "p99": ..., "max": ..., "n": ...}."""
    ms = [v * 1000 for v in values]

    def rounded(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return {
        "p50": rounded(percentile(ms, 50)),
        "p99": rounded(percentile(ms, 99)),
        "max": rounded(max(ms) if ms else None),
        "n": len(ms),
    }


def ratio(measured: float, bound: float) -> float | None:
    return round(measured / bound, 3) if bound > 0 else None
