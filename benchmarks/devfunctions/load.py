"""Load one of the real functions' `main.py` by path, for the benchmark's shims to re-export.

The dev topology runs `functions_root/functions/NAME/main.py`; the benchmark points it at
these shims, which are the real functions except that the worker's builds and deploys
sleep (`ARCHDEPLOY_BENCH_TASK_SECONDS`) instead of running the local deployer.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def real_function(name: str) -> ModuleType:
    path = REPO / "functions" / name / "main.py"
    spec = importlib.util.spec_from_file_location(f"archdeploy_{name}_main", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
