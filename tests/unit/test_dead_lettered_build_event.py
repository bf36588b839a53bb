"""A dead-lettered `cloud-builds` event fails its build task at once, instead of leaving
the run to wait for the build deadline. The event carries the Build resource as JSON
("Subscribe to build notifications", cloud.google.com/build/docs/subscribe-build-notifications)
with archdeploy's tags, which name the task; its attributes carry only buildId and status."""

from __future__ import annotations

from google.cloud.devtools import cloudbuild_v1

from shared.adapters.gcp.build_events import on_dead_message as on_dead_letter
from shared.adapters.gcp.cloud_build import build_tags
from shared.messages import Phase, RunStatus, TaskStatus
from tests.fakes_google.cloudbuild_server import notification
from tests.unit.test_control import System, wide

NAME = "projects/p/locations/europe-west1/builds/1234"


def _event(run_id: str, service: str, status: str) -> tuple[bytes, dict[str, str]]:
    build = cloudbuild_v1.Build(
        id="1234", name=NAME, status=status, tags=build_tags(run_id, "build", service)
    )
    return notification(build)


def test_a_dead_lettered_build_event_fails_its_task_and_the_run() -> None:
    system = System()
    run_id = system.dispatch(wide(1))
    claimed = system.claim(run_id, Phase.BUILD, "svc-0000")
    system.store.record_build_id(claimed.task_id, NAME)

    on_dead_letter(*_event(run_id, "svc-0000", "SUCCESS"), system.rt, "m-1")

    task = system.task(run_id, Phase.BUILD, "svc-0000")
    assert task.status is TaskStatus.FAILED
    assert NAME in (task.error or "") and "dead-lettered" in (task.error or "")
    assert system.result(run_id).status is RunStatus.FAILED


def test_a_dead_lettered_event_of_a_foreign_build_changes_nothing() -> None:
    system = System()
    run_id = system.dispatch(wide(1))
    before = dict(system.store.tasks)
    foreign = cloudbuild_v1.Build(id="9", status="FAILURE", tags=["nightly"])

    on_dead_letter(*notification(foreign), system.rt, "m-2")
    on_dead_letter(b"not json", {"buildId": "9", "status": "FAILURE"}, system.rt, "m-3")

    assert system.store.tasks == before and system.store.get_result(run_id) is None
