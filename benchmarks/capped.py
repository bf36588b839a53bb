"""The capped heterogeneous case (issue 19): `python -m benchmarks.capped` (or `make bench-capped`).

Critical-path-first admission against FIFO admission and the lower bound, on 300
services with lognormal builds and deploys, chains of up to 5 deploys, a cap of 30.
Prints the figures and writes them as JSON to benchmarks/results/capped-latest.json.
docs/performance.md ("Admission under a cap") explains them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.harness import report
from benchmarks.harness.capped import CappedWorkload, measure

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 1.05  # makespan / bound, critical-path-first admission


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capped", description=__doc__)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each admission (median)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    workload = CappedWorkload()
    row = measure(workload, max(1, args.repeat))
    m = report.machine()
    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": m,
        "workload": {
            "services": workload.services,
            "median_s": workload.median,
            "sigma": workload.sigma,
            "chains_up_to": workload.longest,
            "cap": workload.cap,
            "seed": workload.seed,
            "repeat": args.repeat,
        },
        **row,
        "target_met": row["priority_vs_bound"] <= TARGET,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"{m['nproc']} x {m['cpu']}, Python {m['python']}")
    print(
        f"N={workload.services} + director, lognormal median {workload.median * 1000:g} ms "
        f"sigma {workload.sigma}, chains of 1-{workload.longest}, cap {workload.cap}, "
        f"median of {args.repeat}"
    )
    print(
        f"  bound {row['bound_s']} s (build phase {row['build_phase_bound_s']} s + director "
        f"+ deploy phase {row['deploy_phase_bound_s']} s); critical path "
        f"{row['critical_path_s']} s; unphased bound {row['unphased_bound_s']} s"
    )
    for name, label in (("priority", "critical path first"), ("fifo", "FIFO (file order)  ")):
        ideal = row[f"{name}_no_overhead_s"]
        print(
            f"  {label}: {row[f'{name}_s']} s ({row[f'{name}_vs_bound']}x bound); "
            f"with no overhead {ideal} s ({round(ideal / row['bound_s'], 3)}x)"
        )
    mark = "met" if results["target_met"] else "MISS"
    print(f"  [{mark}] critical path first <= {TARGET}x the bound")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "capped-latest.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
