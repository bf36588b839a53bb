"""What the scheduler reads and keeps on Firestore: the waiting tasks by rank, durations
and the build quota.

Layout, for the run store's collection `C`::

    C_durations/{project_id}        {"seconds": {"phase:service": smoothed seconds}}
    C_slots/{project_id}~{k}        {"holder": task id, "expires_at": timestamp}, k < cap

Durations are written once per finished run (a transaction on the project's document),
far below Firestore's ~1 write per second per document.

The build quota is one document per slot, not one counter, plus one per holder::

    C_slots/{project_id}~{k}               {"holder": task id, "expires_at": lease end}
    C_slot_holders/{project_id}~{task id}  {"slot": "{project_id}~{k}", "expires_at": ...}

A slot and its holder's document are written together, in one transaction: taking a
free slot creates both (both creates are checked at commit: if the slot was taken, or the
holder already holds another slot, e.g. a step delivered twice at once, nothing is
written), taking over an expired lease reads the slot and its old holder's document in
the transaction and deletes that document if it still names this slot, and freeing
reads the slot and deletes both only if it is still that holder's. So a build never
holds two slots, and a slot never two builds.

Write rate: a counter document would take two writes per build from every run of the
project, and would queue at ~1 write/s once builds are short or runs many. Here each
build writes its slot twice (taken, freed) and its own holder document twice, so a
document's rate is bounded by 2 / (build duration), whatever the number of runs: only
builds of under two seconds approach the limit. Reading the slots (one batched read per
step) writes nothing, and a caller that finds a slot taken writes nothing either. Callers
try the free slots in random order, so concurrent runs rarely meet on one document; a
loser just tries the next free slot.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

from shared import store_rules as rules
from shared.errors import BackendError
from shared.messages import Phase, TaskRecord, TaskStatus

CAS_ATTEMPTS = 5

log = logging.getLogger(__name__)

T = TypeVar("T")


class FirestoreScheduling:
    """Mixed into `FirestoreRunStore`, which provides `_db`, `collection`, `_transact`,
    `_tasks`."""

    collection: str

    def _db(self) -> Any:
        raise NotImplementedError  # the store's

    def _transact(self, action: str, body: Callable[[Any], T]) -> T:
        raise NotImplementedError  # the store's

    def _tasks(self, run_id: str) -> Any:
        raise NotImplementedError  # the store's

    def waiting_tasks(self, run_id: str, phase: Phase, limit: int) -> list[TaskRecord]:
        if limit <= 0:
            return []
        from shared.adapters.gcp.firestore_store import _equals, _model, _translated

        waiting = (
            self._tasks(run_id)
            .where(filter=_equals("phase", phase.value))
            .where(filter=_equals("status", TaskStatus.WAITING.value))
        )
        with _translated(f"reading the waiting tasks of run {run_id}"):
            # Composite index (phase, status, rank): terraform/firestore.tf. Ties in rank
            # come in document order, as `get_tasks` reads them.
            found = self._by_rank(waiting, limit) if not self._no_rank_index else []
            if len(found) < limit:
                # A query ordered by a field leaves out documents without it: tasks of a
                # run planned before `rank` existed. Fewer than asked: read all the waiting.
                unordered = [_model(TaskRecord, s) for s in waiting.stream()]
                found = sorted(unordered, key=lambda t: t.rank)[:limit]
        return found

    _no_rank_index = False  # Firestore refused the ordered query: no composite index

    def _by_rank(self, waiting: Any, limit: int) -> list[TaskRecord]:
        """The first `limit` of `waiting` by rank; none if the database lacks the index
        (a database not made by our terraform): admission then reads every waiting task
        and sorts them itself, slower for a large phase but right, and says so once."""
        from google.api_core import exceptions as gexc

        from shared.adapters.gcp.firestore_store import _model

        try:
            return [_model(TaskRecord, s) for s in waiting.order_by("rank").limit(limit).stream()]
        except gexc.FailedPrecondition as exc:
            self._no_rank_index = True
            log.warning(
                "Firestore has no composite index on the collection `tasks` (phase, status, "
                "rank), so admission under a cap reads every waiting task of a phase instead "
                "of the first by rank. Create it with our terraform "
                "(google_firestore_index.waiting_tasks in terraform/firestore.tf) or from "
                "the link in Firestore's answer: %s",
                exc.message,
            )
            return []

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
        with _translated(f"reading the build slots of {project_id}"):
            docs = {s.reference.id: s.to_dict() for s in self._db().get_all(refs) if s.exists}
        gone = set(release)
        ours = [r for r in refs if r.id in docs and docs[r.id]["holder"] in gone]
        freed = sum(self._free(project_id, ref, docs[ref.id]["holder"]) for ref in ours)
        # The read is only a hint: every take checks again, in its transaction.
        held = {d["holder"] for d in docs.values() if _live(d, now) and d["holder"] not in gone}
        free = [r for r in refs if r in ours or r.id not in docs or not _live(docs[r.id], now)]
        random.shuffle(free)  # concurrent runs spread over the free slots
        expires = now + timedelta(seconds=lease_seconds)
        for holder in dict.fromkeys(want):
            while holder not in held and free:
                ref = free.pop()
                took = self._take(project_id, ref, holder, now, expires, unread=ref.id not in docs)
                if took is not False:
                    held.add(holder)
                if took is None:
                    free.append(ref)  # it held another slot already: this one is still free
        return [w for w in dict.fromkeys(want) if w in held], freed

    def _take(
        self,
        project_id: str,
        ref: Any,
        holder: str,
        now: datetime,
        expires: datetime,
        *,
        unread: bool,
    ) -> bool | None:
        """Take the slot `ref` for `holder`, in one transaction that also creates its
        holder document: True if taken, False if the slot is someone else's, None if
        `holder` holds another slot (its document exists: the create fails at commit).
        `unread`: the slot had no document when read, so it is created without a read."""
        from google.api_core import exceptions as gexc

        mine = self._holder_ref(project_id, holder)
        doc = {"holder": holder, "expires_at": expires}

        def take(tx: Any) -> bool:
            snapshot = ref.get(transaction=tx)
            slot = snapshot.to_dict() if snapshot.exists else None
            if slot is not None and slot["holder"] == holder:
                tx.set(mine, {"slot": ref.id, "expires_at": expires})  # its own: renewed
            elif slot is not None and _live(slot, now):
                return False
            else:
                if slot is not None:  # an expired lease, taken over: its holder's goes too
                    self._drop_holder(tx, project_id, slot["holder"], ref.id)
                tx.create(mine, {"slot": ref.id, "expires_at": expires})
            tx.set(ref, doc)
            return True

        def take_unread(tx: Any) -> bool:
            # The slot had no document: both creates are checked at commit, no lock taken.
            tx.create(ref, doc)
            tx.create(mine, {"slot": ref.id, "expires_at": expires})
            return True

        for attempt in range(CAS_ATTEMPTS):
            try:
                body = take_unread if unread and attempt == 0 else take
                return self._transact(f"taking a build slot of {project_id}", body)
            except BackendError as exc:
                if not isinstance(exc.__cause__, gexc.AlreadyExists):
                    raise
            if self._holds_live(mine, now):
                return None
        return False

    def _drop_holder(self, tx: Any, project_id: str, holder: str, slot_id: str) -> None:
        """Delete `holder`'s document in `tx` if it still names `slot_id`. One that names
        another slot (the holder, past its lease, took a new one) guards that slot: it
        stays, else a twin delivery of that build could take a third."""
        theirs = self._holder_ref(project_id, holder)
        held = theirs.get(transaction=tx)
        if held.exists and held.get("slot") == slot_id:
            tx.delete(theirs)

    def _holds_live(self, mine: Any, now: datetime) -> bool:
        """Whether the holder document `mine` has a live lease; an expired one is deleted
        (unless it changed since it was read), so that the holder can take a slot again."""
        from google.api_core import exceptions as gexc

        from shared.adapters.gcp.firestore_store import _translated

        with _translated("reading a build slot's holder"):
            snapshot = mine.get()
            if snapshot.exists and _live(snapshot.to_dict(), now):
                return True
            if snapshot.exists:
                option = self._db().write_option(last_update_time=snapshot.update_time)
                with contextlib.suppress(gexc.FailedPrecondition, gexc.NotFound):
                    mine.delete(option=option)
        return False

    def _free(self, project_id: str, ref: Any, holder: str) -> int:
        """Free `holder`'s slot `ref` with its holder document, in one transaction; 0 if
        it is no longer `holder`'s (freed or taken over since it was read)."""

        def free(tx: Any) -> int:
            snapshot = ref.get(transaction=tx)
            if not snapshot.exists or snapshot.get("holder") != holder:
                return 0
            tx.delete(ref)
            tx.delete(self._holder_ref(project_id, holder))
            return 1

        return self._transact(f"freeing a build slot of {project_id}", free)

    def _holder_ref(self, project_id: str, holder: str) -> Any:
        name = f"{project_id}~{quote(holder, safe=':@-_.~')}"
        return self._db().collection(f"{self.collection}_slot_holders").document(name)

    def _durations_ref(self, project_id: str) -> Any:
        return self._db().collection(f"{self.collection}_durations").document(project_id)


def _live(doc: Mapping[str, Any], now: datetime) -> bool:
    """Whether a slot's or holder's lease still runs at `now`."""
    expires: datetime = doc["expires_at"]
    return (expires if expires.tzinfo else expires.replace(tzinfo=UTC)) > now
