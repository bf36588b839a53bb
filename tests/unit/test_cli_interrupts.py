"""A Ctrl-C's cancel runs in a thread of its own: the run must be waited for again once it
has published, and the bus must not be closed under it (issue seen as a rare failure of
tests/hostile/test_release_hostile.py::test_ctrl_c_mid_promote_puts_traffic_back)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from shared.cli.local import Interrupts, _wait
from shared.messages import DeployRequest, RunStatus
from shared.settings import Settings
from tests.fakes import FakeDeployer

ARCHITECTURE = """
name: shop
project_id: demo-shop
region: europe-west1
service_manager_spec: {name: director}
dataflows:
  orders:
    services:
      api: {name: api, deployment: {source_path: svc}}
      worker: {name: worker, deployment: {source_path: svc}}
"""


def test_the_wait_goes_on_for_what_the_cancel_published() -> None:
    release = threading.Event()
    published: list[str] = []
    waits: list[list[str]] = []

    def cancel() -> None:
        release.wait(10)
        published.append("revert")

    class System:
        def wait(self, run_id: str) -> None:
            waits.append(list(published))
            release.set()  # the bus went idle before the cancel published anything

    interrupts = Interrupts(cancel, say=lambda _: None)
    interrupts._handle(signal.SIGINT, None)
    over = threading.Event()
    _wait(System(), "run-1", lambda _: None, over, interrupts)
    assert waits == [[], ["revert"]]
    assert over.is_set()


def test_leaving_waits_for_a_cancel_still_going() -> None:
    release = threading.Event()
    published: list[str] = []

    def cancel() -> None:
        release.wait(10)
        published.append("revert")

    with Interrupts(cancel, say=lambda _: None) as interrupts:
        interrupts._handle(signal.SIGINT, None)
        threading.Timer(0.05, release.set).start()
    assert published == ["revert"]  # the caller closes the bus only after this
    assert interrupts.cancel_settled() is False  # waited for once, not twice


def test_a_ctrl_c_during_dispatch_cancels_the_run_dispatch_creates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler is in place before the run exists: a Ctrl-C while the architecture is
    dispatched cancels that run, rather than leave it running for the next command to
    end as abandoned."""
    from shared import bootstrap
    from shared.cli import local

    deployer = FakeDeployer(build_seconds=0.2)
    monkeypatch.setattr(bootstrap, "make_deployer", lambda settings: deployer)
    submit = bootstrap.Embedded.submit

    def ctrl_c_as_dispatch_starts(self: Any, request: DeployRequest, **kw: Any) -> Any:
        signal.raise_signal(signal.SIGINT)  # handled at dispatch's next bytecode
        return submit(self, request, **kw)

    monkeypatch.setattr(bootstrap.Embedded, "submit", ctrl_c_as_dispatch_starts)
    (tmp_path / "svc").mkdir()
    request = DeployRequest(
        architecture=ARCHITECTURE, source_root=str(tmp_path), idempotency_key="k", requested_by="t"
    )
    said: list[str] = []
    local.prepare(tmp_path / "state")
    try:
        result, interrupted = local.up_embedded(
            Settings(state_dir=tmp_path / "state"), request, 2, wait=False, say=said.append
        )
    except KeyboardInterrupt:
        pytest.fail("a Ctrl-C during dispatch escaped as KeyboardInterrupt: the run stays running")
    assert interrupted
    assert result.status is RunStatus.CANCELLED
    assert deployer.deploys == [], "nothing deployed after the Ctrl-C"
    assert any(line.startswith("cancelling") for line in said), said


def test_a_ctrl_c_before_dispatch_creates_no_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pressed while `up` still ends earlier abandoned runs: no run is created at all,
    and `up` ends as interrupted (exit 130 from the command)."""
    from shared import bootstrap
    from shared.adapters.local.sqlite_store import SqliteRunStore
    from shared.cli import local
    from shared.core import control

    deployer = FakeDeployer()
    monkeypatch.setattr(bootstrap, "make_deployer", lambda settings: deployer)
    end_abandoned = control.end_abandoned

    def ctrl_c_first(rt: Any) -> Any:
        signal.raise_signal(signal.SIGINT)
        return end_abandoned(rt)

    monkeypatch.setattr(control, "end_abandoned", ctrl_c_first)
    (tmp_path / "svc").mkdir()
    request = DeployRequest(
        architecture=ARCHITECTURE, source_root=str(tmp_path), idempotency_key="k", requested_by="t"
    )
    local.prepare(tmp_path / "state")

    with pytest.raises(KeyboardInterrupt):
        local.up_embedded(
            Settings(state_dir=tmp_path / "state"), request, 2, wait=False, say=lambda _: None
        )

    store = SqliteRunStore(tmp_path / "state" / "runs.db")
    try:
        assert store.list_active_runs() == []
        assert deployer.built == []
    finally:
        store.close()
