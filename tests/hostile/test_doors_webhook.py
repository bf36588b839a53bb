"""Case 11: the GitHub webhook (the real function under functions-framework, a fake GitHub
API). A replayed body makes no second run; an older push never supersedes a newer one;
a push whose architecture cannot be fetched ends as a failed run, not as a 404."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.core.handlers import Runtime
from shared.messages import TOPIC_REQUESTS, TOPIC_TASKS, RunStatus, TaskMessage
from tests.e2e.dispatcher_runtime import fresh_dispatcher_runtime
from tests.fakes_github import FakeGitHub, fake_github
from tests.hostile.doors_support import (
    REPO,
    SERVICE_ARCHITECTURE,
    WEBHOOK_SECRET,
    deliver,
    door_client,
    push_payload,
)

__all__ = ["fake_github"]

OLD, NEW = "a" * 40, "b" * 40
TREE = {"services.yaml": SERVICE_ARCHITECTURE, "svc/main.py": "print('svc')\n"}


@pytest.fixture
def rt(
    tmp_path: Path, fake_github: FakeGitHub, monkeypatch: pytest.MonkeyPatch, request: Any
) -> Iterator[Runtime]:
    fake_github.commit(REPO, OLD, TREE)
    fake_github.commit(REPO, NEW, TREE)
    env = {
        "STATE_DIR": str(tmp_path / "state"),
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "GITHUB_TOKEN": fake_github.token or "",
        "GITHUB_API_URL": fake_github.url,
        "WEBHOOK_GIVE_UP_SECONDS": str(getattr(request, "param", 120)),
    }
    for name, value in env.items():
        monkeypatch.setenv(f"ARCHDEPLOY_{name}", value)
    yield from fresh_dispatcher_runtime()


@pytest.fixture
def hook(rt: Runtime) -> Any:
    return door_client("webhook")


def _drain(rt: Runtime) -> None:
    rt.bus.drain(30)  # type: ignore[attr-defined]


def _tasks_of(rt: Runtime, run_id: str) -> list[TaskMessage]:
    published = rt.bus.published  # type: ignore[attr-defined]
    messages = [TaskMessage.model_validate_json(d) for t, d, _ in published if t == TOPIC_TASKS]
    return [m for m in messages if m.run_id == run_id]


def _status(rt: Runtime, run_id: str) -> RunStatus:
    run = rt.store.get_run(run_id)
    assert run is not None, f"no run {run_id}"
    return run.status


def test_a_replayed_body_with_a_new_delivery_id_makes_no_second_run(hook: Any, rt: Runtime) -> None:
    first = deliver(hook, push_payload(NEW, before=OLD, pushed_at=200), "delivery-1")
    _drain(rt)
    replay = deliver(hook, push_payload(NEW, before=OLD, pushed_at=200), "attacker-2")
    _drain(rt)

    assert first.status_code == replay.status_code == 202
    assert replay.get_json()["run_id"] == first.get_json()["run_id"]
    assert replay.get_json()["duplicate"] is True
    assert len(rt.store.list_runs()) == 1
    published = [t for t, _, _ in rt.bus.published]  # type: ignore[attr-defined]
    assert published.count(TOPIC_REQUESTS) == 1


def test_an_older_push_arriving_late_never_supersedes_the_newer_one(hook: Any, rt: Runtime) -> None:
    # Given the newer push's run under way
    newer = deliver(hook, push_payload(NEW, before=OLD, pushed_at=200), "d-new").get_json()
    _drain(rt)
    # When the older push arrives after it (GitHub redelivering, or a new delivery)
    older = deliver(hook, push_payload(OLD, pushed_at=100), "d-old").get_json()
    _drain(rt)
    # Then the newer run goes on, and the older one was cancelled before any task left
    assert _status(rt, newer["run_id"]) is RunStatus.RUNNING
    assert _status(rt, older["run_id"]) is RunStatus.CANCELLED
    old_run = rt.store.get_run(older["run_id"])
    assert old_run is not None and old_run.cancelled_by is not None
    assert newer["run_id"] in old_run.cancelled_by and "newer push" in old_run.cancelled_by
    assert _tasks_of(rt, older["run_id"]) == []  # nothing of the old commit is built
    assert _tasks_of(rt, newer["run_id"])


def test_a_newer_push_supersedes_an_older_one_in_flight(hook: Any, rt: Runtime) -> None:
    older = deliver(hook, push_payload(OLD, pushed_at=100), "d-old").get_json()
    _drain(rt)
    newer = deliver(hook, push_payload(NEW, before=OLD, pushed_at=200), "d-new").get_json()
    _drain(rt)

    assert _status(rt, older["run_id"]) is RunStatus.CANCELLED
    assert _status(rt, newer["run_id"]) is RunStatus.RUNNING


def test_replaying_the_older_push_after_the_newer_changes_nothing(hook: Any, rt: Runtime) -> None:
    older = deliver(hook, push_payload(OLD, pushed_at=100), "d-old").get_json()
    _drain(rt)
    newer = deliver(hook, push_payload(NEW, before=OLD, pushed_at=200), "d-new").get_json()
    _drain(rt)
    replay = deliver(hook, push_payload(OLD, pushed_at=100), "d-replay").get_json()
    _drain(rt)

    assert replay["run_id"] == older["run_id"] and replay["duplicate"] is True
    assert _status(rt, newer["run_id"]) is RunStatus.RUNNING
    assert len(rt.store.list_runs()) == 2


def test_moving_the_branch_back_to_an_older_commit_is_a_new_run(hook: Any, rt: Runtime) -> None:
    first = deliver(hook, push_payload(OLD, pushed_at=100), "d-1").get_json()
    _drain(rt)
    deliver(hook, push_payload(NEW, before=OLD, pushed_at=200), "d-2")
    _drain(rt)
    back = deliver(hook, push_payload(OLD, before=NEW, pushed_at=300), "d-3").get_json()
    _drain(rt)

    assert back["run_id"] != first["run_id"] and "duplicate" not in back
    assert _status(rt, back["run_id"]) is RunStatus.RUNNING


@pytest.mark.parametrize("rt", [0], indirect=True, ids=["give-up-at-once"])
def test_a_push_whose_architecture_cannot_be_fetched_ends_failed_with_the_reason(
    hook: Any, rt: Runtime, fake_github: FakeGitHub
) -> None:
    # Given GitHub answering 503 to everything
    fake_github.fail_next = [503] * 50
    # When a push arrives and the dispatcher gives up on it
    answer = deliver(hook, push_payload(NEW, before=OLD, pushed_at=200), "d-1")
    _drain(rt)
    # Then the run id the webhook answered names a failed run, with the reason
    assert answer.status_code == 202
    run_id = answer.get_json()["run_id"]
    view = door_client("dispatch_http").get(f"/runs/{run_id}")
    assert view.status_code == 200, view.get_data(as_text=True)
    body = view.get_json()
    assert body["status"] == "failed"
    run = rt.store.get_run(run_id)
    assert run is not None and run.error is not None
    assert f"github://{REPO}/services.yaml@{NEW}" in run.error
    assert "503" in run.error and "retrying was given up" in run.error
    assert _tasks_of(rt, run_id) == []


def test_a_dead_lettered_push_whose_run_was_never_made_ends_failed(rt: Runtime) -> None:
    # Given a queued push request Pub/Sub gave up on before any dispatcher made its run
    from shared.core.handlers import GIVE_UP_AT, on_dead_letter, run_id_for
    from shared.messages import DeployRequest

    key = f"github-push:{REPO}:refs/heads/main:{OLD}..{NEW}"
    request = DeployRequest(
        architecture_uri=f"github://{REPO}/services.yaml@{NEW}", idempotency_key=key
    )
    attributes = {"run_id": run_id_for(key), GIVE_UP_AT: "0"}
    # When the dead-letter handler gets it
    on_dead_letter(request.model_dump_json().encode(), attributes, rt, "m-1")
    # Then the run the webhook announced exists, failed, with the reason
    run = rt.store.get_run(run_id_for(key))
    assert run is not None and run.status is RunStatus.FAILED
    assert run.error is not None and "dead-lettered" in run.error
