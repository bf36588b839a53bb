"""What the scheduler keeps across runs, on Firestore: durations and the build quota.

Layout, for the run store's collection `C`::

    C_durations/{project_id}        {"seconds": {"phase:service": smoothed seconds}}
    C_slots/{project_id}~{k}        {"holder": task id, "expires_at": timestamp}, k < cap

Durations are written once per finished run (a transaction on the project's document),
far below Firestore's ~1 write per second per document.

The build quota is one document per slot, not one counter: a counter document would take
two writes per build from every run of the project, and would queue at ~1 write/s once
builds are short or runs many. A slot document is written twice per build that holds it
(taken, freed), so its rate is bounded by 2 / (build duration), whatever the number of
runs; a build of under two seconds is the only way to approach the limit, and a run only
writes the slots it takes. Each write is a compare-and-set on that one document: `create`
(fails if someone took the free slot first) or an `update_time` precondition (an expired
lease, taken over). Callers try the free slots in random order, so concurrent runs rarely
meet on one document; a loser just tries the next free slot.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from shared import store_rules as rules

T = TypeVar("T")


class FirestoreScheduling:
    """Mixed into `FirestoreRunStore`, which provides `_db`, `collection`, `_transact`."""

    collection: str

    def _db(self) -> Any:
        raise NotImplementedError  # the store's

    def _transact(self, action: str, body: Callable[[Any], T]) -> T:
        raise NotImplementedError  # the store's

    def get_durations(self, project_id: str) -> dict[str, float]:
        from shared.adapters.gcp.firestore_store import _translated

        with _translated(f"reading the durations of {project_id}"):
            snapshot = self._durations_ref(project_id).get()
        if not snapshot.exists:
            return {}
        return {k: float(v) for k, v in (snapshot.to_dict().get("seconds") or {}).items()}

    def record_durations(self, project_id: str, samples: Mapping[str, float]) -> None:
        ref = self._durations_ref(project_id)

        def record(tx: Any) -> None:
            snapshot = ref.get(transaction=tx)
            current = (snapshot.to_dict() or {}).get("seconds") or {} if snapshot.exists else {}
            tx.set(ref, {"seconds": rules.durations_updated(current, samples)})

        self._transact(f"recording the durations of {project_id}", record)

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
        from shared.adapters.gcp.firestore_store import _translated

        slots = self._db().collection(f"{self.collection}_slots")
        refs = [slots.document(f"{project_id}~{k}") for k in range(cap)]
        with _translated(f"taking build slots of {project_id}"):
            snapshots = {s.reference.id: s for s in self._db().get_all(refs)}
            free, held, freed = self._sort_slots(refs, snapshots, set(release), now)
            random.shuffle(free)  # concurrent runs spread over the free slots
            expires = now + timedelta(seconds=lease_seconds)
            for holder in dict.fromkeys(want):
                if holder in held:
                    continue
                while free:
                    if self._take(*free.pop(), holder, expires):
                        held.add(holder)
                        break
                else:
                    break  # no free slot left
        return [w for w in dict.fromkeys(want) if w in held], freed

    def _sort_slots(
        self, refs: list[Any], snapshots: Mapping[str, Any], gone: set[str], now: datetime
    ) -> tuple[list[tuple[Any, Any]], set[str], int]:
        """(free slots with the snapshot to compare against, live holders, slots freed),
        freeing the slots `gone` holds on the way."""
        from google.api_core import exceptions as gexc

        free: list[tuple[Any, Any]] = []
        held: set[str] = set()
        freed = 0
        for ref in refs:
            snapshot: Any = snapshots.get(ref.id)
            doc = snapshot.to_dict() if snapshot is not None and snapshot.exists else None
            if doc is None:
                free.append((ref, None))
            elif doc["holder"] in gone:
                try:
                    ref.delete(
                        option=self._db().write_option(last_update_time=snapshot.update_time)
                    )
                except (gexc.FailedPrecondition, gexc.NotFound):
                    continue  # changed since we read it: no longer ours to free
                freed += 1
                free.append((ref, None))
            elif _aware(doc["expires_at"]) <= now:
                free.append((ref, snapshot))
            else:
                held.add(doc["holder"])
        return free, held, freed

    def _take(self, ref: Any, snapshot: Any, holder: str, expires: datetime) -> bool:
        """Take one free slot; False if another caller took it first."""
        from google.api_core import exceptions as gexc

        doc = {"holder": holder, "expires_at": expires}
        try:
            if snapshot is None:
                ref.create(doc)
            else:  # an expired lease: take it over only if nobody did since we read it
                precondition = self._db().write_option(last_update_time=snapshot.update_time)
                ref.update(doc, option=precondition)
        except (gexc.AlreadyExists, gexc.Conflict, gexc.FailedPrecondition, gexc.NotFound):
            return False
        return True

    def _durations_ref(self, project_id: str) -> Any:
        return self._db().collection(f"{self.collection}_durations").document(project_id)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
