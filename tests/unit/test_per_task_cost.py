"""What the per-task cost work (docs/performance.md, issue 19: per-task cost) relies on:
a release copies a spec only to change it, a message nobody hears is not serialised, a
field's annotation is read once however often it conforms, and a result's services
come in phase order."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, field_serializer

from shared import store_rules as rules
from shared.adapters.local.inprocess_bus import InProcessBus
from shared.architecture import conform as conform_module
from shared.architecture.conform import conform
from shared.architecture.model import DeploymentSpec
from shared.architecture.path_checks import _resolved, _resolved_under
from shared.core.state import assemble_result
from shared.messages import Phase, RunRecord, TaskRecord, TaskStatus

NOW = datetime(2026, 11, 30, tzinfo=UTC)


def _waiting(phase: Phase = Phase.BUILD, service: str = "api") -> TaskRecord:
    spec = DeploymentSpec(source_path="services/api", environment_vars={"A": "1"})
    return TaskRecord(
        task_id=f"r:{phase.value}:{service}", run_id="r", phase=phase, service=service, spec=spec
    )


def test_a_release_with_nothing_to_change_shares_the_spec_and_one_with_changes_copies_it() -> None:
    task = _waiting()
    plain = rules.released(task, {}, NOW)
    assert plain is not None and plain.status is TaskStatus.PENDING and plain.released_at == NOW
    assert plain.spec is task.spec
    assert rules.released(task, None, NOW).spec is task.spec  # type: ignore[union-attr]
    changed = rules.released(task, {"image": "img:1", "environment_vars": {"B": "2"}}, NOW)
    assert changed is not None and changed.spec is not task.spec
    assert changed.spec is not None and changed.spec.image == "img:1"
    assert changed.spec.environment_vars == {"B": "2"}
    assert (
        task.spec is not None and task.spec.image == "" and task.spec.environment_vars == {"A": "1"}
    )  # the waiting record is left as it was
    assert task.status is TaskStatus.WAITING


class _Counted(BaseModel):
    name: str
    dumps: list[int] = []

    @field_serializer("name")
    def _count(self, name: str) -> str:
        self.dumps.append(1)
        return name


def test_a_message_nobody_subscribes_to_is_not_serialised_and_one_heard_is() -> None:
    bus = InProcessBus(parallelism=2)
    heard: list[bytes] = []
    try:
        bus.subscribe("heard", lambda data, attrs: heard.append(data))
        nobody = _Counted(name="x")
        bus.publish("nobody", nobody)
        assert nobody.dumps == []
        listened = _Counted(name="y")
        bus.publish("heard", listened)
        bus.drain(10)
        assert listened.dumps == [1] and len(heard) == 1 and b'"y"' in heard[0]
        bus.record = True  # recording keeps even what nobody hears
        recorded = _Counted(name="z")
        bus.publish("nobody", recorded)
        assert recorded.dumps == [1] and bus.published[-1][0] == "nobody"
    finally:
        bus.close()


class _Inner(BaseModel):
    cpu: str = ""


class _Outer(BaseModel):
    inner: _Inner | None = None
    items: list[str] = []
    named: dict[str, _Inner] = {}


def test_conform_reads_each_annotation_once_and_shapes_as_before() -> None:
    conform_module._SHAPES.clear()
    data: dict[str, Any] = {"inner": {"cpu": 1}, "items": [2, "b"], "named": {"a": None}}
    raw = {("inner", "cpu"): "1", ("items", 0): "2"}
    first = conform(data, _Outer, raw)
    assert first.data == {"inner": {"cpu": "1"}, "items": ["2", "b"], "named": {"a": {}}}
    assert first.entries == {("named", "a")}
    assert _Inner in {shape.annotation for shape in conform_module._SHAPES.values()}
    shapes = dict(conform_module._SHAPES)
    again = conform(data, _Outer, raw)
    assert again.data == first.data and shapes == conform_module._SHAPES


def test_an_annotation_that_cannot_be_a_key_is_shaped_without_the_cache() -> None:
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

    shape = conform_module._shape(Unhashable())
    assert not shape.model and shape.origin is None


def test_a_result_lists_services_and_errors_by_phase_then_name() -> None:
    run = RunRecord(run_id="r", idempotency_key="k", created_at=NOW, updated_at=NOW)
    end = NOW + timedelta(seconds=1)
    done = {"status": TaskStatus.SUCCEEDED, "started_at": NOW, "finished_at": end}
    failed = {**done, "status": TaskStatus.FAILED}
    tasks = [
        _waiting(Phase.DEPLOY, "api").model_copy(update={**failed, "error": "no port"}),
        _waiting(Phase.BUILD, "web").model_copy(update={**failed, "error": "no Dockerfile"}),
        _waiting(Phase.BUILD, "api").model_copy(update={**done, "image": "api:1"}),
    ]
    result = assemble_result(run, tasks)
    assert list(result.services) == ["api", "web"]
    assert [(e.service, e.phase) for e in result.errors] == [
        ("web", Phase.BUILD),
        ("api", Phase.DEPLOY),
    ]
    assert result.images == {"api": "api:1"}
    assert result.services["api"].status == "failed"


def test_waiting_counts_only_on_the_bus_whose_thread_runs_the_handler() -> None:
    ours, other = InProcessBus(parallelism=2), InProcessBus(parallelism=2)
    seen: list[int] = []

    def handler(data: bytes, attrs: Any) -> None:
        pool = ours._pools["t"]
        with other.waiting():  # another bus's: its pools do not know this thread
            seen.append(len(pool._waiting))
        with ours.waiting():
            seen.append(len(pool._waiting))
        seen.append(len(pool._waiting))

    try:
        ours.subscribe("t", handler)
        ours.publish_raw("t", b"{}", {})
        ours.drain(10)
        assert seen == [0, 1, 0]
    finally:
        ours.close()
        other.close()


def test_a_path_resolved_under_its_cached_directory_is_what_resolving_it_whole_gives(
    tmp_path: Path,
) -> None:
    """Every kind of step: plain, a link out, a link in the middle, a loop, missing, `..`,
    a file taken for a directory; each path resolved twice (the second from the cache)."""
    base, outside = tmp_path / "base", tmp_path / "outside"
    (base / "services" / "api").mkdir(parents=True)
    (base / "services" / "file").write_text("")
    (outside / "x").mkdir(parents=True)
    (base / "services" / "out").symlink_to(outside)
    (base / "via").symlink_to(base / "services")
    (base / "loop").symlink_to(base / "loop")
    names = [
        "services/api",
        "services/out",
        "services/out/x",
        "via/api",
        "via/out/x",
        "services/missing",
        "missing/deeper",
        "services/api/..",
        "services/api/",
        "services/file/api",
        "../outside/x",
    ]
    dirs: dict[str, str] = {}
    for _ in range(2):
        for name in names:
            whole = os.path.join(str(base), name)
            assert _resolved_under(whole, dirs) == _resolved(whole), name
    for looped in ("loop", "loop/api"):
        whole = os.path.join(str(base), looped)
        with pytest.raises(RuntimeError):
            _resolved(whole)
        with pytest.raises(RuntimeError):
            _resolved_under(whole, dirs)


def test_a_result_builds_one_entry_per_service_not_per_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.core import state
    from shared.messages import ServiceResult

    built: list[str] = []

    class Counted(ServiceResult):
        def __init__(self, **data: Any) -> None:
            built.append(data["service"])
            super().__init__(**data)

    monkeypatch.setattr(state, "ServiceResult", Counted)
    run = RunRecord(run_id="r", idempotency_key="k", created_at=NOW, updated_at=NOW)
    done = {"status": TaskStatus.SUCCEEDED, "started_at": NOW, "finished_at": NOW}
    tasks = [
        _waiting(phase, service).model_copy(update=done)
        for phase in (Phase.BUILD, Phase.DEPLOY)
        for service in ("api", "web")
    ]

    result = assemble_result(run, tasks)

    assert sorted(built) == ["api", "web"]
    assert [s.status for s in result.services.values()] == ["deployed", "deployed"]
