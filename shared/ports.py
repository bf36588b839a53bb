"""The ports the core talks to. Adapters live in `shared.adapters`; fakes in `tests.fakes`.

Every write the store offers is a compare-and-set: Pub/Sub delivers at least once and
may reorder, so handlers rely on the store, not on delivery, to do each thing once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from shared.architecture.model import DeploymentSpec, VerifyCheck
from shared.messages import (
    CheckOutcome,
    Phase,
    RunRecord,
    RunResult,
    TaskCompletion,
    TaskRecord,
    TaskStatus,
)

if TYPE_CHECKING:
    from shared.architecture.loading import LoadedArchitecture


class MessageBus(Protocol):
    def publish(
        self, topic: str, message: BaseModel, *, attributes: Mapping[str, str] | None = None
    ) -> None:
        """Publish one JSON-serialised message; returns once the bus has accepted it.

        Raises `BackendError` (retryable when transient) if the bus refused it.
        """
        ...

    def publish_many(
        self, topic: str, messages: Sequence[tuple[BaseModel, Mapping[str, str]]]
    ) -> None:
        """Publish several messages (batched where the bus can); all accepted, or raises."""
        ...


class BuildSlots(Protocol):
    """Where the project build cap's slots are kept: the run store (`RunStore` is a
    `BuildSlots`) or, embedded, one file for every state folder of the machine
    (`shared.adapters.local.build_slots`)."""

    def build_slots(
        self,
        project_id: str,
        *,
        release: Sequence[str],
        want: Sequence[str],
        cap: int,
        lease_seconds: float,
        now: datetime,
    ) -> tuple[list[str], int]:
        """The project's build quota, shared by every run: at most `cap` slots, each held
        by one task id until released or until its lease (`lease_seconds` after it was
        taken) has expired, so a killed run cannot keep the quota.

        Frees the slots the ids in `release` hold, then grants slots to the ids of `want`
        in order while fewer than `cap` live slots are held (`store_rules.slots_taken`).
        An id that holds a slot keeps it: asking again takes no second slot. Returns (the
        ids of `want` that hold a slot, how many slots `release` freed). Compare-and-set:
        concurrent callers never hold more than `cap` live slots together.
        """
        ...


class RunStore(BuildSlots, Protocol):
    def create_run(
        self, run: RunRecord, tasks: Sequence[TaskRecord], architecture: str
    ) -> tuple[RunRecord, bool]:
        """Store a new run with its planned tasks and the architecture's text, atomically.

        Idempotent by `run.run_id`: if it exists, returns `(existing, False)` and writes
        nothing; otherwise `(run, True)`.
        """
        ...

    def get_run(self, run_id: str) -> RunRecord | None: ...

    def list_runs(self, limit: int = 20) -> list[RunRecord]:
        """The most recent runs first."""
        ...

    def list_active_runs(self, limit: int = 500) -> list[RunRecord]:
        """Runs still `running`, oldest first: what the deadline sweep looks at."""
        ...

    def get_architecture(self, run_id: str) -> str | None: ...

    def get_task(self, task_id: str) -> TaskRecord | None: ...

    def get_tasks(self, run_id: str, phase: Phase | None = None) -> list[TaskRecord]: ...

    def waiting_tasks(self, run_id: str, phase: Phase, limit: int) -> list[TaskRecord]:
        """At most `limit` of the phase's WAITING tasks, in admission order: by `rank`, ties
        in file order (`shared.core.priority.admission_order`); an index read, not the phase."""
        ...

    def release_task(
        self, task_id: str, *, spec_updates: Mapping[str, Any] | None = None, now: datetime
    ) -> TaskRecord | None:
        """`waiting` -> `pending`, merging `spec_updates` into the task's spec.

        Returns the released record, or None if the task was not waiting (another caller
        released it already): exactly one caller wins, and only it publishes the task.
        """
        ...

    def release_tasks(
        self, releases: Sequence[tuple[str, Mapping[str, Any]]], *, now: datetime
    ) -> list[TaskRecord]:
        """`release_task` for many tasks (id, spec updates) at once, in one transaction
        where the store has them; returns the records this call released."""
        ...

    def claim_task(
        self, task_id: str, *, worker: str, lease_seconds: float, now: datetime
    ) -> TaskRecord | None:
        """`pending` (or `running` with an expired lease) -> `running`, attempt + 1.

        Returns the claimed record, or None when the task is terminal, waiting, or held
        by a live lease: a duplicate task message then starts nothing.
        """
        ...

    def record_build_id(self, task_id: str, build_id: str) -> None:
        """Remember the backend's id of a submitted build, so a redelivery can find it."""
        ...

    def complete_task(self, completion: TaskCompletion) -> TaskRecord | None:
        """Apply a completion to a task that is not yet terminal.

        Returns the updated record, or None if the task was terminal already (a duplicate
        completion), or unknown: the second delivery changes nothing. Also None when the
        completion comes from an attempt the task has moved past (`store_rules.superseded`):
        a late outcome never wins over the attempt that holds the task.
        """
        ...

    def update_run(
        self, run_id: str, *, expect: Mapping[str, Any], changes: Mapping[str, Any]
    ) -> RunRecord | None:
        """Compare-and-set on the run's fields: applies `changes` only if every field in
        `expect` still has that value. Returns the new record, or None if it did not apply.
        """
        ...

    def finish_run(self, run_id: str, result: RunResult) -> bool:
        """Move a running run to `result.status` and store `result`, exactly once.

        Returns True for the one caller that finished it; False if it was finished already.
        """
        ...

    def get_result(self, run_id: str) -> RunResult | None: ...

    def count_tasks(self, run_id: str, phase: Phase) -> Mapping[TaskStatus, int]:
        """How many of the run's tasks of `phase` are in each status."""
        ...

    # --- what the scheduler keeps across runs (`shared.core.priority`) ----------------

    def get_durations(self, project_id: str) -> Mapping[str, float]:
        """The project's smoothed task durations in seconds, keyed `phase:service`;
        empty when none were recorded."""
        ...

    def record_durations(self, project_id: str, samples: Mapping[str, float]) -> None:
        """Smooth `samples` (`phase:service` -> seconds) into the project's durations
        (`store_rules.durations_updated`), atomically: concurrent callers lose no sample."""
        ...


class SourceProvider(Protocol):
    def localize(self, spec: DeploymentSpec) -> DeploymentSpec:
        """A copy of `spec` whose `source_path` (and `config_templates` sources) the
        container deployer can read: remote sources (e.g. `github://owner/repo@sha/dir`)
        fetched into a local directory. Specs whose sources are already local or in
        `gs://` come back unchanged. Idempotent; raises `BackendError` if the fetch fails.
        """
        ...


class ArchitectureReader(Protocol):
    def read(self, uri: str) -> LoadedArchitecture:
        """The architecture at a remote location (`gs://...`, `github://...`), validated.

        A location that cannot be read for good (missing, refused, malformed) raises
        `ArchitectureError` naming it and the fix; a transient failure a retryable
        `BackendError`.
        """
        ...


class CheckRunner(Protocol):
    """Runs a release's checks against a staged revision (`shared.adapters.checks`)."""

    def run(self, check: VerifyCheck, target_url: str) -> CheckOutcome:
        """One check against `target_url`: passed or not, with the response or output.

        Never raises for the check's own failure (refused, timed out, wrong status, a
        non-zero exit): that is an outcome that did not pass."""
        ...
