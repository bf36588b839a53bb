"""A run store proxy that notes when completions are applied, and by which component."""

from __future__ import annotations

import threading
import time
from typing import Any

from shared.messages import TaskCompletion, TaskRecord


class TimingStore:
    """Delegates every call to `inner`; `complete_task` also records wall times:
    `applied[task_id]` when a completion first changed the task (whoever applied it),
    `aggregated[task_id]` when the aggregator's call for it returned (its bus thread)."""

    def __init__(self, inner: Any, aggregator_thread_prefix: str = "bus-completions") -> None:
        self._inner = inner
        self._prefix = aggregator_thread_prefix
        self._lock = threading.Lock()
        self.applied: dict[str, float] = {}
        self.aggregated: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        # Kept on the proxy once looked up: a run calls the store thousands of times, and
        # the proxy's own cost is not the subject.
        value = getattr(self._inner, name)
        setattr(self, name, value)
        return value

    def complete_task(self, completion: TaskCompletion) -> TaskRecord | None:
        done = self._inner.complete_task(completion)
        now = time.time()
        aggregator = threading.current_thread().name.startswith(self._prefix)
        with self._lock:
            if done is not None:
                self.applied.setdefault(completion.task_id, now)
            if aggregator:
                self.aggregated.setdefault(completion.task_id, now)
        return done
