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


# Issue 19's overhead targets: (key, target, bound, "today" when the issue was written).
TARGETS = (
    ("n1000_zero", "N=1000 zero-cost tasks, embedded: makespan <= 1.0 s", 1.0, "2.69 s"),
    ("n300_cp", "N=300 x 100 ms: makespan <= 1.5 x critical path", 1.5, "3.6x"),
    ("n300_pool", "N=300 x 100 ms: makespan <= 1.2 x thread-pool baseline", 1.2, "2.85x"),
    ("aggregator", "aggregator on SQLite, 20 % duplicates: >= 3,000 completions/s", 3000, "-"),
    (
        "validate",
        "`archdeploy validate examples/architecture.yaml`: <= 0.15 s wall",
        0.15,
        "0.3-0.48 s",
    ),
    ("second_up", "unchanged second `up` of the example: <= 0.3 x the first", 0.3, "0.62x"),
    ("import", "each function's import over the functions-framework floor: <= 60 ms", 60, "-"),
)


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target, its figure, the figure's noise, the baseline, and whether it is met
    (None: not measured in this run)."""
    rows = {row["case"]: row for row in results.get("cases", [])}
    measured = _issue19_figures(results, rows)
    out: list[dict[str, Any]] = []
    for key, target, bound, baseline in TARGETS:
        figure, noise = measured.get(key, (None, None))
        met = (
            None if figure is None else figure >= bound if key == "aggregator" else figure <= bound
        )
        out.append(
            {"target": target, "figure": figure, "noise": noise, "baseline": baseline, "met": met}
        )
    out += _older_targets(results, rows)
    return out


def _issue19_figures(
    results: dict[str, Any], rows: dict[str, dict[str, Any]]
) -> dict[str, tuple[Any, Any]]:
    """key -> (median figure, its noise: min-max over the runs)."""
    found: dict[str, tuple[Any, Any]] = {}
    if zero := rows.get("N1000-0ms"):
        found["n1000_zero"] = (zero["makespan_s"], _range(zero.get("makespans_s")))
    if headline := rows.get("N300-100ms"):
        cp, pool = headline.get("vs_critical_path"), headline.get("vs_thread_pool")
        found["n300_cp"] = (cp, _range(headline.get("vs_critical_path_runs")))
        found["n300_pool"] = (pool, _range(headline.get("vs_thread_pool_runs")))
    if agg := results.get("aggregator"):
        found["aggregator"] = (agg["per_second"], _range(agg.get("per_second_runs")))
    if validate := results.get("validate"):
        found["validate"] = (validate["median"], _range(validate["values"]))
    if up := results.get("second_up"):
        found["second_up"] = (up["ratio"]["median"], _range(up["ratio"]["values"]))
    if cold := results.get("cold_start"):
        worst = max(cold["functions"], key=lambda f: f["over_floor_ms"])
        runs = [v for f in cold["functions"] for v in f.get("over_floor_ms_runs", [])]
        found["import"] = (worst["over_floor_ms"], _range(runs))
    return found


def _range(values: list[float] | None) -> str | None:
    if not values:
        return None
    return f"{_cell(float(min(values)))}-{_cell(float(max(values)))} over {len(values)} runs"


def _older_targets(
    results: dict[str, Any], rows: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The targets of the issues before 19, still watched."""
    out: list[dict[str, Any]] = []

    def add(target: str, figure: Any, met: bool | None) -> None:
        out.append(
            {"target": target, "figure": figure, "noise": None, "baseline": None, "met": met}
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
    cold = results.get("cold_start")
    if cold:
        bad = [f["function"] for f in cold["functions"] if not f["ok"] or f["unused_sdks"]]
        add("no function imports an SDK it does not use", bad or "none", not bad)
    return out
