"""One answer to "is this Google error transient?", the same in every Google adapter.

The table is retry.py's module doc: quota and overload (429), unavailable (503), timeouts
(504, 408), internal and gateway faults (500, 502), aborted (409 ABORTED: a concurrent
change), a client library whose own retries ran out, and transport errors are transient;
the rest (400, 401, 403, 404, 409 ALREADY_EXISTS, 412) are not.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
from google.api_core import exceptions as api

from shared.adapters.gcp import firestore_store, gcs_source, pubsub_bus
from shared.adapters.gcp.retry import RetryPolicy, is_transient
from shared.errors import ArchdeployError, BackendError

TABLE: list[tuple[BaseException, bool]] = [
    (api.TooManyRequests("quota"), True),
    (api.ResourceExhausted("quota"), True),
    (api.ServiceUnavailable("down"), True),
    (api.DeadlineExceeded("slow"), True),
    (api.GatewayTimeout("slow"), True),
    (api.from_http_status(408, "request timeout"), True),
    (api.InternalServerError("oops"), True),
    (api.BadGateway("front end"), True),
    (api.Aborted("contention"), True),
    (api.RetryError("gave up", cause=api.ServiceUnavailable("down")), True),
    (requests.ConnectionError("reset"), True),
    (requests.Timeout("read timeout"), True),
    (ConnectionResetError("reset"), True),
    (api.InvalidArgument("bad"), False),
    (api.Unauthenticated("who"), False),
    (api.PermissionDenied("no"), False),
    (api.NotFound("gone"), False),
    (api.AlreadyExists("there"), False),
    (api.FailedPrecondition("state"), False),
    (api.Cancelled("cancelled"), False),
    (requests.exceptions.InvalidURL("bad url"), False),
    (ValueError("not ours"), False),
]
IDS = [f"{type(exc).__name__}-{transient}" for exc, transient in TABLE]


@pytest.mark.parametrize(("exc", "transient"), TABLE, ids=IDS)
def test_the_policy(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


API_ERRORS = [(e, t) for e, t in TABLE if isinstance(e, api.GoogleAPICallError)]


def _raise(exc: BaseException) -> Any:
    raise exc


@pytest.mark.parametrize(("exc", "transient"), API_ERRORS, ids=lambda v: str(v)[:30])
def test_every_google_adapter_gives_the_same_answer(exc: Any, transient: bool) -> None:
    answers = []
    for translated in (pubsub_bus._translated, firestore_store._translated):
        with pytest.raises(BackendError) as caught, translated("doing it"):
            raise exc
        answers.append(caught.value.retryable)
    gcs = gcs_source._translated(exc, "gs://b/o")
    answers.append(isinstance(gcs, BackendError) and gcs.retryable)
    assert isinstance(gcs, ArchdeployError)
    with pytest.raises(BackendError) as caught:
        RetryPolicy(attempts=1).call(lambda: _raise(exc), context="c", api_call="Call")
    answers.append(caught.value.retryable)
    assert answers == [transient] * 4
