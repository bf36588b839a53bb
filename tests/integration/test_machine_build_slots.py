"""The embedded build cap's slots, one SQLite file for every state folder of the machine
(`shared.adapters.local.build_slots`): shared between stores, freed when their process
is gone, kept (until the lease) when taken on another host."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.adapters.local.build_slots import WAITER_TTL, MachineBuildSlots, default_slots_file
from shared.adapters.local.processes import start_time
from shared.bootstrap import embedded, wire
from shared.errors import UsageError
from shared.settings import Settings

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _take(slots: MachineBuildSlots, *want: str, release: tuple[str, ...] = ()) -> list[str]:
    granted, _ = slots.build_slots(
        "p", release=release, want=list(want), cap=2, lease_seconds=600, now=NOW
    )
    return granted


def test_every_user_of_the_file_shares_the_cap(tmp_path: Path) -> None:
    one, two = MachineBuildSlots(tmp_path / "s.db"), MachineBuildSlots(tmp_path / "s.db")
    assert _take(one, "a", "b") == ["a", "b"]
    assert _take(two, "c") == []
    assert _take(two, "c", release=("a",)) == ["c"]
    assert _take(one, "b", "d") == ["b"]  # b keeps its one slot; d waits
    one.close()
    two.close()


def _owned_by(path: Path, holder: str, pid: int, started: int | None, host: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE build_slots SET pid = ?, started = ?, host = ? WHERE holder = ?",
            (pid, started, host, holder),
        )


def test_a_slot_whose_process_is_gone_is_free_at_once(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    slots = MachineBuildSlots(path)
    assert _take(slots, "dead", "remote") == ["dead", "remote"]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    started = start_time(gone.pid)
    gone.wait()
    _owned_by(path, "dead", gone.pid, started, slots._me[2])
    _owned_by(path, "remote", 1, 1, "another-host")
    # The dead process's slot is free long before its lease; the other host's is not.
    assert _take(slots, "x", "y") == ["x"]
    later = NOW + timedelta(seconds=601)
    granted, _ = slots.build_slots("p", release=[], want=["y"], cap=2, lease_seconds=600, now=later)
    assert granted == ["y"]
    slots.close()


def test_concurrent_processes_never_hold_more_slots_than_the_cap(tmp_path: Path) -> None:
    granted: list[str] = []
    barrier = threading.Barrier(6)

    def take(i: int) -> None:
        slots = MachineBuildSlots(tmp_path / "s.db")
        barrier.wait()
        got, _ = slots.build_slots(
            "p", release=[], want=[f"{i}-{k}" for k in range(3)], cap=5, lease_seconds=60, now=NOW
        )
        granted.extend(got)
        slots.close()

    threads = [threading.Thread(target=take, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == len(set(granted)) == 5


def test_embedded_with_a_cap_keeps_slots_in_the_machine_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_slots_file() == tmp_path / "xdg" / "archdeploy" / "build-slots.db"
    capped = embedded(Settings(state_dir=tmp_path / "a", project_build_cap=3))
    assert isinstance(capped.rt.slots, MachineBuildSlots)
    assert capped.rt.slots.path == default_slots_file()
    capped.close()
    named = embedded(
        Settings(state_dir=tmp_path / "b", project_build_cap=3, build_slots_file=tmp_path / "f")
    )
    assert isinstance(named.rt.slots, MachineBuildSlots) and named.rt.slots.path == tmp_path / "f"
    named.close()
    uncapped = embedded(Settings(state_dir=tmp_path / "c"))
    assert uncapped.rt.slots is None
    uncapped.close()
    # What `archdeploy cancel` wires: it frees the run's slots in the same file.
    wired = wire(Settings(state_dir=tmp_path / "d", project_build_cap=3))
    assert isinstance(wired.slots, MachineBuildSlots) and wired.slots.path == default_slots_file()
    wired.slots.close()
    assert wire(Settings(state_dir=tmp_path / "e")).slots is None


def _process(path: Path, host: str) -> MachineBuildSlots:
    """The file as another process sees it (told apart here by its host)."""
    return MachineBuildSlots(path, owner=(os.getpid(), start_time(os.getpid()), host))


def _ask(slots: MachineBuildSlots, want: str, release: str = "", now: datetime = NOW) -> list[str]:
    granted, _ = slots.build_slots(
        "p", release=[release] if release else [], want=[want], cap=1, lease_seconds=600, now=now
    )
    return granted


def test_processes_take_turns_rather_than_one_keeping_the_slots_it_frees(
    tmp_path: Path,
) -> None:
    """Process a's builds keep ending and it keeps wanting more; b waits (and asks again
    only at its sweeps). The slot a frees goes to b, then back to a: turns, whoever asks
    first after a slot is freed."""
    a, b = _process(tmp_path / "s.db", "a"), _process(tmp_path / "s.db", "b")
    assert _ask(a, "a1") == ["a1"]
    assert _ask(b, "b1") == []  # b waits from now on
    assert _ask(a, "a2", release="a1") == []  # freed, but b waited first
    assert _ask(b, "b1") == ["b1"]
    assert _ask(a, "a2") == []
    assert _ask(b, "b2", release="b1") == []  # a waits ahead of b now
    assert _ask(a, "a2") == ["a2"]
    a.close()  # a waits no more: b is not held back for it
    assert _ask(b, "b2", release="b1") == []  # a2 holds the only slot
    assert _ask(_process(tmp_path / "s.db", "c"), "c1", release="a2") == []  # b waits ahead
    assert _ask(b, "b2") == ["b2"]
    b.close()


def test_a_process_that_stopped_asking_holds_nobody_back(tmp_path: Path) -> None:
    a, b = _process(tmp_path / "s.db", "a"), _process(tmp_path / "s.db", "b")
    assert _ask(a, "a1") == ["a1"]
    assert _ask(b, "b1") == []
    later = NOW + WAITER_TTL + timedelta(seconds=1)
    assert _ask(a, "a2", release="a1", now=later) == ["a2"]  # b has not asked since
    a.close()
    b.close()


@pytest.mark.parametrize("kind", ["under-a-file", "not-a-database"])
def test_a_slots_file_that_cannot_be_opened_is_named_before_the_run_starts(
    tmp_path: Path, kind: str
) -> None:
    """An unwritable or foreign slots file (a read-only home, a typo in the setting) is
    a usage error naming the setting and the fix, not a handler failing mid-run."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a database, " * 512)
    path = blocker / "slots.db" if kind == "under-a-file" else blocker
    settings = Settings(state_dir=tmp_path / "a", project_build_cap=2, build_slots_file=path)
    with pytest.raises(UsageError) as raised:
        embedded(settings).close()
    assert "ARCHDEPLOY_BUILD_SLOTS_FILE" in str(raised.value), raised.value
    assert str(path) in str(raised.value)
