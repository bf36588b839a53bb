"""Each function's cold start: import time and peak memory of `import main`, against a bare
`import functions_framework`, and which Google SDKs it loads (none it does not use)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS = ("dispatcher", "worker", "aggregator")
SDKS = {
    "pubsub": "google.cloud.pubsub_v1",
    "firestore": "google.cloud.firestore",
    "cloudbuild": "google.cloud.devtools.cloudbuild_v1",
    "run": "google.cloud.run_v2",
    "storage": "google.cloud.storage",
}
# What each function uses on Google Cloud (imported lazily, on its first event): the bus
# and the store for all three; Cloud Build and Cloud Run for the worker; Cloud Storage
# (gs:// architectures and build sources) for the dispatcher and the worker.
USES = {
    "dispatcher": ("pubsub", "firestore", "storage"),
    "worker": ("pubsub", "firestore", "cloudbuild", "run", "storage"),
    "aggregator": ("pubsub", "firestore"),
}
_PROBE = """
{statement}
# VmHWM is this process's own peak (ru_maxrss would carry the parent's across exec).
with open("/proc/self/status") as status:
    print(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
"""


def measure(runs: int = 5) -> dict[str, Any]:
    """Medians over `runs`; each function's figures beside the functions-framework floor."""
    floor = _median_import_ms("import functions_framework", "functions_framework", REPO, runs)
    floor_rss = _maxrss_mib("import functions_framework", REPO)
    rows = [_function(name, runs) for name in FUNCTIONS]
    return {"floor_import_ms": floor, "floor_maxrss_mib": floor_rss, "functions": rows}


def _function(name: str, runs: int) -> dict[str, Any]:
    where = REPO / "functions" / name
    output = _importtime("import main", where)
    loaded = _sdks(imported_modules(output))
    imports = "".join(f"\nimport {SDKS[sdk]}" for sdk in USES[name])
    import_ms, _ = _import_ms_runs("import main", "main", where, runs)
    over = _paired_over_floor(where, runs)
    return {
        "function": name,
        "import_ms": import_ms,
        # Each run's function import less the floor measured just before it: on a shared
        # machine the load moves both, so the paired difference is the steadier figure.
        "over_floor_ms": round(statistics.median(over), 1),
        "over_floor_ms_runs": [round(v, 1) for v in over],
        "maxrss_mib": _maxrss_mib("import main", where),
        "sdks_at_import": loaded,
        "first_event_sdk_ms": _median_sdk_ms(name, where, runs),
        "first_event_shared_ms": _median_after_main_ms(FIRST_EVENT, where, runs),
        "maxrss_with_sdks_mib": _maxrss_mib("import main" + imports, where),
        "unused_sdks": sorted(set(loaded) - set(USES[name])),
        "ok": not loaded,  # every SDK is imported lazily, on first use
    }


# What a function's first event imports of ours (main.py defers it; see its docstring).
FIRST_EVENT = (
    "from shared import bootstrap; from shared.core import handlers; "
    "from shared.doors import pubsub"
)


_PAIRED = """
import time
began = time.process_time()
import functions_framework
floor = time.process_time()
import main
print((floor - began) * 1000, (time.process_time() - floor) * 1000)
"""


def _paired_over_floor(where: Path, runs: int) -> list[float]:
    """Per run, in one process: the CPU milliseconds `import main` adds once
    `import functions_framework` (the floor) is done. CPU time, unlike `-X importtime`'s
    wall time, does not count the time other processes held the cores: on a shared
    machine the wall figure moved by +-200 ms between runs, this one by a few ms."""
    over = []
    for _ in range(runs + 1):  # the first writes the bytecode caches
        done = subprocess.run(
            [sys.executable, "-c", _PAIRED],
            cwd=where,
            env=_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        over.append(float(done.stdout.split()[-1]))
    return over[1:]


def _median_after_main_ms(imports: str, where: Path, runs: int) -> float:
    """What the first event adds by importing `imports`, after `main`."""
    times = [after_ms(_importtime(f"import main; {imports}", where), "main") for _ in range(runs)]
    return round(statistics.median(times), 1)


def _median_sdk_ms(name: str, where: Path, runs: int) -> float:
    """What the first event adds: importing the SDKs the function uses, after `main`."""
    statement = "import main; " + "; ".join(f"import {SDKS[sdk]}" for sdk in USES[name])
    times = [after_ms(_importtime(statement, where), "main") for _ in range(runs)]
    return round(statistics.median(times), 1)


def _importtime(statement: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stderr


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHDEPLOY_")}
    env.pop("PUBSUB_EMULATOR_HOST", None)
    env.pop("FIRESTORE_EMULATOR_HOST", None)
    env["PYTHONPATH"] = str(REPO)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # else every run compiles: not a cold start
    return env


def _median_import_ms(statement: str, module: str, cwd: Path, runs: int) -> float:
    """Median over `runs` (after one that writes the bytecode caches) of the cumulative
    `-X importtime` of the top-level `module`, in milliseconds."""
    return _import_ms_runs(statement, module, cwd, runs)[0]


def _import_ms_runs(statement: str, module: str, cwd: Path, runs: int) -> tuple[float, list[float]]:
    """The median and every run of `_median_import_ms`."""
    times = [top_level_ms(_importtime(statement, cwd), module) for _ in range(runs + 1)]
    return round(statistics.median(times[1:]), 1), times[1:]


def top_level_ms(importtime: str, module: str) -> float:
    """The cumulative time of `module` imported at the top level, from `-X importtime`."""
    for line in importtime.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        _, cumulative, name = line.split("|")
        if name.rstrip() == f" {module}":
            return int(cumulative) / 1000
    raise ValueError(f"{module} not found in the -X importtime output")


def after_ms(importtime: str, module: str) -> float:
    """The cumulative time of every top-level import after `module`'s, in milliseconds."""
    total, seen = 0, False
    for line in importtime.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        _, cumulative, name = line.split("|")
        if seen and name.startswith(" ") and not name.startswith("  "):
            total += int(cumulative)
        seen = seen or name.rstrip() == f" {module}"
    return total / 1000


def imported_modules(importtime: str) -> list[str]:
    return [
        line.split("|")[2].strip()
        for line in importtime.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    ]


def _maxrss_mib(statement: str, cwd: Path) -> float:
    """Peak resident memory of a process that runs `statement`, in MiB."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(statement=statement)],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    kib = int(done.stdout.strip().splitlines()[-1])
    return round(kib / 1024, 1)


def _sdks(modules: list[str]) -> list[str]:
    return sorted(
        name for name, prefix in SDKS.items() if any(m.startswith(prefix) for m in modules)
    )
