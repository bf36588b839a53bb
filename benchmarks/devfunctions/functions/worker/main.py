"""The real worker, whose deployer sleeps `ARCHDEPLOY_BENCH_TASK_SECONDS` per task.

`shared.bootstrap` picks the deployer from settings (`local` or `gcp`) and has no way to
name another, so this shim replaces `make_deployer` before the runtime is built.
"""

from __future__ import annotations

import os

from load import real_function

from benchmarks.harness.deployer import BenchDeployer
from shared import bootstrap
from shared.settings import Settings


def _sleeping_deployer(settings: Settings) -> BenchDeployer:
    return BenchDeployer({}, "sleep", default=float(os.environ["ARCHDEPLOY_BENCH_TASK_SECONDS"]))


bootstrap.make_deployer = _sleeping_deployer  # type: ignore[assignment]
globals().update({k: v for k, v in vars(real_function("worker")).items() if not k.startswith("_")})
