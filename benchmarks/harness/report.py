"""The printed table, the targets' verdicts, and the machine the figures come from."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

COLUMNS = (
    ("mode", "mode"),
    ("case", "case"),
    ("N", "services"),
    ("cap", "cap"),
    ("CP s", "critical_path_s"),
    ("makespan s", "makespan_s"),
    ("xCP", "vs_critical_path"),
    ("pool s", "thread_pool_s"),
    ("xpool", "vs_thread_pool"),
    ("ceil(N/C) s", "capped_bound_s"),
    ("xcap", "vs_capped_bound"),
    ("seq s", "sequential_s"),
    ("rel>start p50/p99 ms", "release_to_start_ms"),
    ("done>agg p50/p99 ms", "completion_to_aggregator_ms"),
)


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                "",
            )
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model or platform.processor(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return f"{_cell(value.get('p50'))}/{_cell(value.get('p99'))}"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    header = [title for title, _ in COLUMNS]
    body = [[_cell(row.get(key)) for _, key in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *body]
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target, its figure and whether it is met (None: not measured here)."""
    rows = {row["case"]: row for row in results.get("cases", [])}
    out: list[dict[str, Any]] = []

    def add(target: str, figure: Any, met: bool | None) -> None:
        out.append({"target": target, "figure": figure, "met": met})

    headline = rows.get("N300-100ms")
    if headline:
        add(
            "embedded N=300, 100 ms, parallelism >= N: makespan <= 1.10 x critical path",
            headline["vs_critical_path"],
            headline["vs_critical_path"] <= 1.10,
        )
    no_deps = [
        r
        for r in rows.values()
        if r["mode"] == "embedded"
        and r.get("vs_thread_pool")
        and "independent" in r["workload"]
        and r["critical_path_s"] > 0
    ]
    if no_deps:
        worst = max(no_deps, key=lambda r: r["vs_thread_pool"])
        add(
            "embedded, no dependencies: makespan <= 1.10 x thread-pool baseline (worst case)",
            f"{worst['vs_thread_pool']} ({worst['case']})",
            worst["vs_thread_pool"] <= 1.10,
        )
    dev = rows.get("dev-N30-1000ms")
    add(
        "dev topology N=30, 1 s tasks: makespan <= 1.25 x critical path",
        dev["vs_critical_path"] if dev else results.get("dev_topology_skipped"),
        dev["vs_critical_path"] <= 1.25 if dev else None,
    )
    agg = results.get("aggregator")
    add(
        "aggregator on SQLite, 20 % duplicates: >= 2,000 completions/s",
        agg["per_second"] if agg else None,
        agg["per_second"] >= 2000 if agg else None,
    )
    cold = results.get("cold_start")
    if cold:
        bad = [f["function"] for f in cold["functions"] if not f["ok"] or f["unused_sdks"]]
        add("no function imports an SDK it does not use", bad or "none", not bad)
    return out
