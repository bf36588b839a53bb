"""`python -m benchmarks.run` judges issue 19's targets from the figures it measured."""

from __future__ import annotations

from typing import Any

from benchmarks.harness.report import verdicts


def judged(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["target"]: v for v in verdicts(results)}


def one(found: dict[str, dict[str, Any]], words: str) -> dict[str, Any]:
    (match,) = (v for target, v in found.items() if words in target)
    return match


def test_each_target_gets_its_median_its_noise_its_baseline_and_a_verdict() -> None:
    # Given figures on both sides of the targets
    results = {
        "cases": [
            {
                "mode": "embedded",
                "case": "N1000-0ms",
                "workload": "N=1000 independent, 0 ms sleep",
                "critical_path_s": 0.0,
                "makespan_s": 0.9,
                "makespans_s": [0.8, 0.9, 1.3],
            },
            {
                "mode": "embedded",
                "case": "N300-100ms",
                "workload": "N=300 independent, 100 ms sleep",
                "critical_path_s": 0.2,
                "makespan_s": 0.5,
                "vs_critical_path": 2.5,
                "vs_critical_path_runs": [2.4, 2.5, 2.6],
                "vs_thread_pool": 1.1,
                "vs_thread_pool_runs": [1.0, 1.1, 1.3],
            },
        ],
        "aggregator": {"per_second": 2900, "per_second_runs": [2800, 2900, 3100]},
        "validate": {"median": 0.14, "values": [0.13, 0.14, 0.2]},
        "second_up": {"ratio": {"median": 0.31, "values": [0.3, 0.31, 0.4]}},
        "cold_start": {
            "functions": [
                {"function": "worker", "over_floor_ms": 5.0, "ok": True, "unused_sdks": []},
                {"function": "dispatcher", "over_floor_ms": 61.0, "ok": True, "unused_sdks": []},
            ]
        },
    }

    # When the run judges them
    found = judged(results)

    # Then each is met or missed by its own bound, with the runs' range beside it
    zero = one(found, "N=1000 zero-cost")
    assert (zero["figure"], zero["met"], zero["baseline"]) == (0.9, True, "2.69 s")
    assert zero["noise"] == "0.8-1.3 over 3 runs"
    assert one(found, "1.5 x critical path")["met"] is False
    assert one(found, "1.2 x thread-pool")["met"] is True
    assert one(found, "3,000 completions/s")["met"] is False
    assert one(found, "0.15 s wall")["met"] is True
    assert one(found, "0.3 x the first")["met"] is False
    slowest = one(found, "over the functions-framework floor")
    assert (slowest["figure"], slowest["met"]) == (61.0, False)


def test_a_figure_not_measured_in_this_run_is_not_judged() -> None:
    found = judged({"cases": []})

    assert one(found, "0.3 x the first")["met"] is None
    assert one(found, "N=1000 zero-cost")["figure"] is None
