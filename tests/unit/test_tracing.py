"""Log lines carry the caller's trace: from HTTP headers and from a CloudEvent's extension."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator, Mapping

import pytest
from cloudevents.http import CloudEvent
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from shared.core.runtime import Runtime
from shared.doors import http_api, pubsub
from shared.errors import BackendError
from shared.logs import JsonFormatter, http_trace_labels, trace_labels
from shared.messages import RunRecord
from tests.fakes import FakeBus, FakeRunStore

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.entries: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entries.append(json.loads(self.format(record)))


@pytest.fixture
def lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[Lines]:
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.setenv("ARCHDEPLOY_PROJECT", "acme")
    handler = Lines()
    logger = logging.getLogger("shared")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_a_w3c_traceparent_gives_the_trace_and_span(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "acme")
    assert trace_labels(TRACEPARENT) == {
        "trace": f"projects/acme/traces/{TRACE}",
        "span_id": "00f067aa0ba902b7",
    }


def test_the_cloud_trace_header_gives_the_trace_and_its_decimal_span_in_hex(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.delenv("ARCHDEPLOY_PROJECT", raising=False)
    headers = {"X-Cloud-Trace-Context": f"{TRACE}/1;o=1"}
    assert http_trace_labels(headers) == {"trace": TRACE, "span_id": "0000000000000001"}


@pytest.mark.parametrize(
    "value",
    ["", "garbage", f"00-{'0' * 32}-00f067aa0ba902b7-01", "00-short-span-01"],
    ids=["empty", "garbage", "zero-trace", "short"],
)
def test_a_missing_or_malformed_trace_sets_nothing(value: str) -> None:
    assert trace_labels(value, value) == {}


class UnreachableStore(FakeRunStore):
    def get_run(self, run_id: str) -> RunRecord | None:
        raise BackendError("the store is down", retryable=True)


def test_the_http_door_logs_under_the_request_s_trace(lines: Lines) -> None:
    rt = Runtime(store=UnreachableStore(), bus=FakeBus())
    environ = EnvironBuilder(path="/runs/r-1", headers={"traceparent": TRACEPARENT}).get_environ()
    body, status, _ = http_api.handle(Request(environ), rt)
    assert status == 503, body
    (entry,) = [e for e in lines.entries if "failed in a backend" in str(e["message"])]
    assert entry["logging.googleapis.com/trace"] == f"projects/acme/traces/{TRACE}"
    assert entry["logging.googleapis.com/spanId"] == "00f067aa0ba902b7"


def test_the_pub_sub_door_logs_under_the_event_s_traceparent(lines: Lines) -> None:
    message = {"data": base64.b64encode(b"{}").decode(), "messageId": "7", "attributes": {}}
    attributes = {
        "id": "e-1",
        "source": "//pubsub",
        "type": "google.cloud.pubsub.topic.v1.messagePublished",
        "traceparent": TRACEPARENT,
    }
    event = CloudEvent(attributes, {"message": message})

    def handler(data: bytes, attrs: Mapping[str, str], rt: Runtime, message_id: str) -> None:
        logging.getLogger("shared.test").info("handled %s", message_id)

    pubsub.handle(event, handler, lambda: Runtime(store=FakeRunStore(), bus=FakeBus()))
    (entry,) = [e for e in lines.entries if e["message"] == "handled 7"]
    assert entry["logging.googleapis.com/trace"] == f"projects/acme/traces/{TRACE}"
