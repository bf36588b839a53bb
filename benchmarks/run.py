"""Measure the fan-out against its limit: `python -m benchmarks.run` (or `make bench`).

Runs synthetic architectures through the real core (embedded: in-process bus + SQLite;
and, where the emulators are installed, the dev topology of three functions), beside the
thread-pool and sequential baselines; then the functions' cold starts and the
aggregator's throughput. Prints a table and the targets' verdicts, and writes everything
as JSON to benchmarks/results/. docs/performance.md explains the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.harness import aggregator, coldstart, devtopo, report, startup
from benchmarks.harness.embedded import Case, run_case
from benchmarks.harness.workload import Durations, Workload

RESULTS = Path(__file__).resolve().parent / "results"
MS100 = Durations(0.1)


def cases(quick: bool) -> list[Case]:
    """What `make bench` runs; `quick` keeps one of each kind."""
    zero, second = Durations(0.0), Durations(1.0)
    chosen = [
        Case("N3-0ms", Workload(3, zero), 32),
        Case("N3-100ms", Workload(3, MS100), 32),
        Case("N3-1s", Workload(3, second), 32),
        Case("N30-0ms", Workload(30, zero), 32),
        Case("N30-100ms", Workload(30, MS100), 32),
        Case("N30-1s", Workload(30, second), 32),
        Case("N300-0ms", Workload(300, zero), 300),
        Case("N300-100ms", Workload(300, MS100), 300),
        Case("N300-1s", Workload(300, second), 300),
        Case("N300-100ms-C32", Workload(300, MS100), 32),
        Case("N1000-0ms", Workload(1000, zero), 1000),
        Case("N1000-100ms", Workload(1000, MS100), 1000),
        Case("N30-100ms-chains5+director", Workload(30, MS100, director=True, chain=5), 32),
        Case("N30-lognormal100ms", Workload(30, Durations(0.1, "lognormal")), 32),
        Case("N30-10ms-busy", Workload(30, Durations(0.01), mode="busy"), 32, run_sequential=True),
    ]
    if quick:
        keep = {"N3-100ms", "N30-100ms", "N300-100ms", "N300-100ms-C32"}
        chosen = [c for c in chosen if c.name in keep]
    return chosen


def measure_case(case: Case, repeat: int) -> dict[str, Any]:
    """The median run (by makespan) of `repeat`, with every makespan kept. The ratios are
    the medians of each run's own ratio (bound and baseline measured in the same run)."""
    rows = [run_case(case) for _ in range(repeat)]
    rows.sort(key=lambda r: r["makespan_s"])
    median = dict(rows[len(rows) // 2])
    median["makespans_s"] = [r["makespan_s"] for r in rows]
    if len(rows) > 1:
        median["makespan_spread_s"] = round(statistics.pstdev(median["makespans_s"]), 4)
    for key in ("vs_critical_path", "vs_thread_pool"):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            median[key] = round(statistics.median(values), 3)
            median[f"{key}_runs"] = values
    return median


def measure_aggregator(repeat: int, services: int) -> dict[str, Any]:
    """The median run (by completions per second) of `repeat`, every run's rate kept."""
    runs = sorted((aggregator.throughput(services) for _ in range(repeat)), key=_rate)
    median = dict(runs[len(runs) // 2])
    median["per_second_runs"] = [_rate(r) for r in runs]
    return median


def _rate(run: dict[str, Any]) -> int:
    return int(run["per_second"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few cases, one run each")
    parser.add_argument("--repeat", type=int, default=5, help="runs per case (median kept)")
    parser.add_argument("--no-dev", action="store_true", help="skip the dev topology")
    parser.add_argument(
        "--no-up", action="store_true", help="skip the example's first and second `up`"
    )
    parser.add_argument("--only", nargs="*", default=[], help="embedded case names to run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else max(1, args.repeat)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "cases": [],
    }
    run_case(Case("warm-up", Workload(3, Durations(0.0)), 4, baseline=False))
    for case in cases(args.quick):
        if args.only and case.name not in args.only:
            continue
        slow = case.workload.durations.mean >= 1.0  # seconds per run: once is enough
        row = measure_case(case, 1 if slow else repeat)
        results["cases"].append(row)
        _progress(f"{case.name}: {row['makespan_s']} s (critical path {row['critical_path_s']} s)")
    if not args.only:
        _dev_topology(results, args.no_dev)
        _progress("cold starts ...")
        results["cold_start"] = coldstart.measure(3 if args.quick else 5)
        _progress("aggregator throughput ...")
        results["aggregator"] = measure_aggregator(repeat, 500 if args.quick else 2000)
        _progress("archdeploy validate ...")
        results["validate"] = startup.validate_wall(5)
        if not args.no_up:
            _progress("the example's first and second up ...")
            results["second_up"] = startup.second_up(2 if args.quick else 5)
    results["targets"] = report.verdicts(results)
    results["seconds"] = round(time.perf_counter() - started, 1)
    _print(results)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{results['when'][:19].replace(':', '')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {path}")
    return 0


def _dev_topology(results: dict[str, Any], skip: bool) -> None:
    why = "skipped (--no-dev)" if skip else devtopo.available()
    if why is not None:
        results["dev_topology_skipped"] = why
        _progress(f"dev topology: {why}")
        return
    _progress("dev topology: starting the emulators and the functions ...")
    try:
        results["cases"] += devtopo.run_cases([3, 30], 1.0)
    except Exception as exc:  # report it beside the other figures rather than lose them
        results["dev_topology_skipped"] = f"failed: {type(exc).__name__}: {exc}"
        _progress(f"dev topology failed: {exc}")


def _print(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(f"\n{m['nproc']} x {m['cpu']}, Python {m['python']}\n")
    print(report.table(results["cases"]))
    cold = results.get("cold_start")
    if cold:
        print(
            f"\ncold start (floor: import functions_framework {cold['floor_import_ms']} ms, "
            f"{cold['floor_maxrss_mib']} MiB)"
        )
        for f in cold["functions"]:
            print(
                f"  {f['function']:<10} import {f['import_ms']} ms (+{f['over_floor_ms']}), "
                f"{f['maxrss_mib']} MiB; first event: ours {f['first_event_shared_ms']} ms, "
                f"SDKs {f['first_event_sdk_ms']} ms, "
                f"{f['maxrss_with_sdks_mib']} MiB; SDKs at import: {f['sdks_at_import'] or 'none'}"
            )
    agg = results.get("aggregator")
    if agg:
        print(
            f"\naggregator: {agg['per_second']} completions/s ({agg['completions']} with "
            f"{agg['duplicates']:.0%} duplicates, {agg['services']} services)"
        )
    _print_startup(results)
    print("\ntargets (figure: median; noise: min-max of the runs; baseline: when set):")
    for t in results["targets"]:
        mark = {True: "met ", False: "MISS", None: "n/a "}[t["met"]]
        extra = "; ".join(
            f"{label} {t[key]}"
            for label, key in (("noise", "noise"), ("baseline", "baseline"))
            if t.get(key)
        )
        print(f"  [{mark}] {t['target']}: {t['figure']}" + (f" ({extra})" if extra else ""))
    print(f"\n{results['seconds']} s in all")


def _print_startup(results: dict[str, Any]) -> None:
    if validate := results.get("validate"):
        print(
            f"\nvalidate the example: {validate['median']} s wall (runs {validate['values']}), "
            f"{validate['cpu_s']['median']} s CPU"
        )
    if up := results.get("second_up"):
        print(
            f"example up: first {up['first_s']['median']} s, unchanged second "
            f"{up['second_s']['median']} s, ratio {up['ratio']['median']} "
            f"(runs {up['ratio']['values']})"
        )


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
