"""The dashboard's view model, the text timeline, and the pages' routes, over records
written by hand: no I/O, no clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.cli.timeline import render_timeline
from shared.doors.dashboard.app import route
from shared.doors.dashboard.view import build_view, load_runs, trigger_of
from shared.messages import Phase, RunRecord, RunStatus, TaskRecord, TaskStatus, task_id_for
from tests.fakes import FakeRunStore

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(**fields: Any) -> RunRecord:
    base: dict[str, Any] = {"run_id": "r-1", "idempotency_key": "k", "created_at": T0}
    return RunRecord(**{**base, **fields})


def task(phase: Phase, service: str, status: TaskStatus, **fields: Any) -> TaskRecord:
    return TaskRecord(
        task_id=task_id_for("r-1", phase, service),
        run_id="r-1",
        phase=phase,
        service=service,
        status=status,
        **fields,
    )


def done(phase: Phase, service: str, start: float, end: float, **fields: Any) -> TaskRecord:
    status = fields.pop("status", TaskStatus.SUCCEEDED)
    return task(phase, service, status, started_at=at(start), finished_at=at(end), **fields)


def note(view: Any, service: str) -> str:
    return next(r.note for r in view.rows if r.service == service)


def test_each_service_gets_one_row_with_a_bar_per_phase_on_the_run_s_time_axis() -> None:
    tasks = [
        done(Phase.BUILD, "director", 0, 2, image="img/director@sha256:aa"),
        done(Phase.DIRECTOR, "director", 3, 4, url="https://director"),
        done(Phase.BUILD, "ingest", 1, 3, image="img/ingest@sha256:bb"),
        done(Phase.DEPLOY, "ingest", 4, 6, url="https://ingest", depends_on=["director"]),
    ]
    view = build_view(run(status=RunStatus.SUCCEEDED, finished_at=at(6)), tasks)
    assert [r.service for r in view.rows] == ["director", "ingest"]
    ingest = view.rows[1]
    assert [(b.phase, b.status, b.start, b.end) for b in ingest.bars] == [
        ("build", "succeeded", 1.0, 3.0),
        ("deploy", "succeeded", 4.0, 6.0),
    ]
    assert (ingest.image, ingest.url, ingest.seconds) == (
        "img/ingest@sha256:bb",
        "https://ingest",
        4.0,
    )
    assert view.seconds == 6.0 and view.counts == {"deployed": 2}


def test_a_build_held_back_by_the_cap_and_deploys_waiting_say_so() -> None:
    tasks = [
        task(Phase.BUILD, "ingest", TaskStatus.RUNNING, started_at=at(0)),
        task(Phase.BUILD, "enrich", TaskStatus.WAITING),
        task(Phase.DEPLOY, "ingest", TaskStatus.WAITING),
        task(Phase.DEPLOY, "enrich", TaskStatus.WAITING, depends_on=["ingest"]),
    ]
    view = build_view(run(), tasks, now=at(5))
    assert note(view, "enrich") == "held by the build cap"
    assert note(view, "ingest") == ""  # building: its bar says so
    ingest = next(r for r in view.rows if r.service == "ingest")
    assert ingest.bars[0].end == 5.0  # a running bar reaches now
    assert not view.finished


def test_a_deploy_waits_on_the_dependencies_not_yet_up() -> None:
    tasks = [
        done(Phase.BUILD, "ingest", 0, 1),
        done(Phase.BUILD, "enrich", 0, 1),
        task(Phase.DEPLOY, "ingest", TaskStatus.RUNNING, started_at=at(2)),
        task(Phase.DEPLOY, "enrich", TaskStatus.WAITING, depends_on=["ingest"]),
    ]
    view = build_view(run(phase=Phase.DEPLOY), tasks, now=at(3))
    assert note(view, "enrich") == "waiting on ingest"


def test_after_a_failed_build_the_others_say_which_build_stopped_them() -> None:
    tasks = [
        done(Phase.BUILD, "enrich", 0, 1, status=TaskStatus.FAILED, error="pip failed\nline 2"),
        done(Phase.BUILD, "ingest", 0, 2),
        task(
            Phase.BUILD,
            "notify",
            TaskStatus.SKIPPED,
            finished_at=at(1),
            error="not started: build of enrich failed",
        ),
        task(Phase.DEPLOY, "ingest", TaskStatus.WAITING),
    ]
    halted = "build of enrich failed"
    view = build_view(run(status=RunStatus.FAILED, halted=halted, finished_at=at(2)), tasks)
    assert note(view, "ingest") == "skipped: build of enrich failed"
    assert note(view, "notify") == "skipped: build of enrich failed"
    assert note(view, "enrich") == "build failed: see its error"
    enrich = next(r for r in view.rows if r.service == "enrich")
    assert (enrich.error, enrich.error_phase) == ("pip failed\nline 2", "build")


def test_an_unchanged_service_is_not_redeployed() -> None:
    tasks = [
        done(Phase.BUILD, "ingest", 0, 0, reused=True),
        done(Phase.DEPLOY, "ingest", 1, 1, reused=True, url="https://ingest"),
    ]
    view = build_view(run(status=RunStatus.SUCCEEDED, finished_at=at(1)), tasks)
    assert note(view, "ingest") == "unchanged: not redeployed"
    assert [b.label for b in view.rows[0].bars] == ["build reused", "deploy unchanged"]


@pytest.mark.parametrize(
    ("requested_by", "supersede_key", "architecture_file", "expected"),
    [
        ("cli", None, "/a.yaml", ("CLI", "cli", "", "", "")),
        ("http", None, "", ("HTTP", "http", "", "", "")),
        ("", None, "", ("Pub/Sub", "", "", "", "")),
        (
            "github:alice",
            "github:acme/shop:main",
            "github://acme/shop/arch.yaml@0123456789abcdef",
            ("push", "alice", "acme/shop", "main", "0123456789abcdef"),
        ),
    ],
    ids=["cli", "http", "pubsub", "push"],
)
def test_the_trigger_is_read_from_what_the_request_carried(
    requested_by: str, supersede_key: str | None, architecture_file: str, expected: tuple[str, ...]
) -> None:
    t = trigger_of(
        run(
            requested_by=requested_by,
            supersede_key=supersede_key,
            architecture_file=architecture_file,
        )
    )
    assert (t.kind, t.who, t.repository, t.branch, t.commit) == expected


def _failed_view() -> Any:
    tasks = [
        done(Phase.BUILD, "ingest", 0, 4),
        done(Phase.BUILD, "enrich", 2, 6, status=TaskStatus.FAILED, error="E" * 300),
        done(Phase.DEPLOY, "ingest", 6, 10),
    ]
    return build_view(run(status=RunStatus.FAILED, finished_at=at(10)), tasks)


def test_the_text_timeline_draws_phases_and_outcomes_as_characters_on_a_shared_axis() -> None:
    text = render_timeline(_failed_view(), width=76)
    lines = text.splitlines()
    ingest = next(line for line in lines if line.startswith("ingest"))
    enrich = next(line for line in lines if line.startswith("enrich"))
    track = ingest.split("|")[1]
    assert len(track) == 76 - 7 - 36  # width - name column - status columns
    assert track.startswith("B===") and "D===" in track and track.rstrip().endswith("=")
    enrich_track = enrich.split("|")[1]
    assert enrich_track.index("B") == len(track) // 5  # starts at 2s of 10s
    assert set(enrich_track.strip()[1:]) == {"!"}
    assert "build failed: see its error" in enrich
    assert "E" * 300 in text  # the error in full, after the bars
    assert "B build" in text and "! failed" in text  # the legend


def test_the_pages_answer_by_route_and_escape_what_they_show() -> None:
    store = FakeRunStore()
    evil = "<script>alert(1)</script>"
    r = run(requested_by=evil)
    store.create_run(
        r, [done(Phase.BUILD, "ingest", 0, 1, status=TaskStatus.FAILED, error=evil)], ""
    )
    body, status, headers = route("GET", "/runs/r-1", store)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert evil not in body and "&lt;script&gt;" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert route("GET", "/", store)[0].count("tr class=run") == 1
    assert route("GET", "/runs/r-1/live", store)[0].startswith("<div id=live")
    assert '"run_id": "r-1"' in route("GET", "/runs/r-1.json", store)[0]
    assert route("GET", "/runs/r-404", store)[1] == 404
    assert route("GET", "/runs/bad%20id", store)[1] == 400
    assert route("POST", "/", store)[1] == 405
    assert route("GET", "/static/dashboard.js", store)[2]["Content-Type"].startswith(
        "text/javascript"
    )
    assert route("GET", "/static/../../etc/passwd", store)[1] == 404


def test_the_runs_list_counts_services_by_outcome() -> None:
    store = FakeRunStore()
    store.create_run(
        run(), [done(Phase.BUILD, "a", 0, 1), task(Phase.BUILD, "b", TaskStatus.WAITING)], ""
    )
    [summary] = load_runs(store)
    assert summary.counts == {"built": 1, "waiting": 1}
    assert summary.seconds is None  # still running


def test_rows_keep_their_place_as_a_run_goes_on_director_first_then_by_name() -> None:
    tasks = [
        done(Phase.BUILD, "zeta", 0, 1),
        task(Phase.BUILD, "alpha", TaskStatus.WAITING),
        task(Phase.BUILD, "director", TaskStatus.WAITING),
        task(Phase.DIRECTOR, "director", TaskStatus.WAITING),
    ]
    view = build_view(run(), tasks, now=at(2))
    assert [r.service for r in view.rows] == ["director", "alpha", "zeta"]


def test_the_runs_list_names_a_push_s_repository_branch_commit_and_who_asked() -> None:
    store = FakeRunStore()
    pushed = run(
        requested_by="github:alice",
        supersede_key="github:acme/shop:main",
        architecture_file="github://acme/shop/arch.yaml@0123456789abcdef",
    )
    store.create_run(pushed, [done(Phase.BUILD, "a", 0, 1)], "")
    body = route("GET", "/", store)[0]
    assert "push to <b>acme/shop</b> <code>main</code> <code>0123456789ab</code>" in body
    assert "<td>alice</td>" in body
