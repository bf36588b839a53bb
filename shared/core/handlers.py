"""The handlers, in one place for callers: dispatch a request, run a task, record a
completion; and the hands-on ones, cancel and sweep.

Each is safe to call again with the same input (Pub/Sub redelivers): the store's
compare-and-set writes decide who acts. They live in `shared.core.dispatcher`,
`shared.core.worker`, `shared.core.aggregator` and `shared.core.control`.
"""

from __future__ import annotations

from shared.core.aggregator import record_completion
from shared.core.control import SweepReport, cancel_run, fail_task, sweep
from shared.core.dispatcher import dispatch_request, load_request, run_id_for
from shared.core.run_engine import advance_run, task_message
from shared.core.runtime import Runtime, run_view
from shared.core.worker import run_task

__all__ = [
    "Runtime",
    "SweepReport",
    "advance_run",
    "cancel_run",
    "dispatch_request",
    "fail_task",
    "load_request",
    "record_completion",
    "run_id_for",
    "run_task",
    "run_view",
    "sweep",
    "task_message",
]
