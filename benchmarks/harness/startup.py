"""What a user waits for at the command line, whole process: `archdeploy validate` of the
example, and an unchanged second `up` of the example against its first.

Every command runs as a user runs it: a new process of the `archdeploy` entry point, with
bytecode caches written (one run first; `PYTHONDONTWRITEBYTECODE` is dropped, else every
process would compile every module), the state in a temporary folder, every service torn
down at the end.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples"


def command() -> list[str]:
    """The `archdeploy` entry point beside this interpreter, or its module."""
    script = Path(sys.executable).with_name("archdeploy")
    return [str(script)] if script.exists() else [sys.executable, "-m", "shared.cli.main"]


def env() -> dict[str, str]:
    """The caller's environment, minus what would change what is measured."""
    skip = ("ARCHDEPLOY_", "PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    clean.pop("PYTHONDONTWRITEBYTECODE", None)
    return clean


def timed(args: list[str], cwd: Path) -> float:
    """Wall seconds of one `archdeploy ARGS` process; raises if it fails."""
    return timed_with_cpu(args, cwd)[0]


def timed_with_cpu(args: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one `archdeploy ARGS` process. The
    CPU figure does not grow while other processes hold the cores: it tells a slower
    run on a loaded machine from a slower program."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [*command(), *args], cwd=cwd, env=env(), capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"archdeploy {' '.join(args)} exited {done.returncode}: {done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu


def spread(values: list[float], digits: int = 3) -> dict[str, Any]:
    """Median, every value, and the noise: min-max and the population standard deviation."""
    return {
        "median": round(statistics.median(values), digits),
        "values": [round(v, digits) for v in values],
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "stdev": round(statistics.pstdev(values), digits),
    }


def validate_wall(runs: int = 5) -> dict[str, Any]:
    """`archdeploy validate examples/architecture.yaml`, wall seconds, after a warm-up."""
    args = ["validate", "examples/architecture.yaml"]
    timed(args, REPO)  # writes the bytecode caches
    measured = [timed_with_cpu(args, REPO) for _ in range(runs)]
    return {**spread([wall for wall, _ in measured]), "cpu_s": spread([c for _, c in measured])}


def second_up(runs: int = 5) -> dict[str, Any]:
    """Per run: a fresh copy of the example and state folder, `up` (builds and deploys
    everything), `up` again (nothing changed), `down`. The ratio is second / first."""
    firsts, seconds, ratios = [], [], []
    for _ in range(runs):
        first, second = _up_twice()
        firsts.append(first)
        seconds.append(second)
        ratios.append(second / first)
    return {
        "ratio": spread(ratios),
        "first_s": spread(firsts),
        "second_s": spread(seconds),
    }


def _up_twice() -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="archdeploy-bench-up-") as tmp:
        where = Path(tmp) / "example"
        shutil.copytree(EXAMPLE, where, ignore=shutil.ignore_patterns(".archdeploy"))
        state = ["--state-dir", str(Path(tmp) / "state")]
        try:
            first = timed([*state, "up", "architecture.yaml"], where)
            second = timed([*state, "up", "architecture.yaml"], where)
        finally:
            subprocess.run(
                [*command(), *state, "down", "architecture.yaml"],
                cwd=where,
                env=env(),
                capture_output=True,
                check=False,
            )
    return first, second
