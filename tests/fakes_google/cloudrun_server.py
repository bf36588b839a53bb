"""A fake Cloud Run Admin API v2 (`google.cloud.run.v2.Services`) on a local gRPC port.

Keeps services in memory, answers with long-running operations that finish after the
service's `latency`, and records every request. A service configured with
`readiness_failure` ends with a FAILED Ready condition: by default as Cloud Run reports it
(the operation fails and its metadata holds the service), or, with
`readiness_as_operation_error=False`, as a successful operation whose service is not ready.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from google.cloud import run_v2
from google.longrunning import operations_pb2
from google.rpc import code_pb2, status_pb2

SERVICES = "google.cloud.run.v2.Services"
OPERATIONS = "google.longrunning.Operations"
_MUTATIONS = ("CreateService", "UpdateService", "DeleteService")
_READY = run_v2.Condition.State.CONDITION_SUCCEEDED
_FAILED = run_v2.Condition.State.CONDITION_FAILED


@dataclass
class RunBehaviour:
    """How the fake treats one service (keyed by service id)."""

    latency: float = 0.0  # seconds until an operation is done
    readiness_failure: str = ""  # message of a FAILED Ready condition
    readiness_as_operation_error: bool = True
    transient_errors: int = 0  # the first k Create/Update/Delete calls fail with transient_code
    transient_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    error_code: grpc.StatusCode | None = None  # every Create/Update/Delete fails with this
    error_message: str = "invalid service"


class FakeCloudRun:
    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.services: dict[str, Any] = {}  # full name -> run_v2.Service
        self.behaviours: dict[str, RunBehaviour] = {}
        self.default = RunBehaviour()
        self.address = ""
        self._operations: dict[str, tuple[float, operations_pb2.Operation]] = {}
        self._mutations: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None

    def behave(self, service: str, **settings: Any) -> None:
        self.behaviours[service] = RunBehaviour(**settings)

    def calls(self, method: str) -> list[Any]:
        with self._lock:
            return [request for name, request in self.requests if name == method]

    def start(self) -> str:
        operation = operations_pb2.Operation.SerializeToString
        handlers: dict[str, tuple[Any, Any, Any]] = {
            "GetService": (self._get, run_v2.GetServiceRequest, run_v2.Service.serialize),
            "CreateService": (self._create, run_v2.CreateServiceRequest, operation),
            "UpdateService": (self._update, run_v2.UpdateServiceRequest, operation),
            "DeleteService": (self._delete, run_v2.DeleteServiceRequest, operation),
        }
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        service_handlers = {
            name: grpc.unary_unary_rpc_method_handler(fn, request_type.deserialize, serializer)
            for name, (fn, request_type, serializer) in handlers.items()
        }
        get_operation = grpc.unary_unary_rpc_method_handler(
            self._get_operation,
            operations_pb2.GetOperationRequest.FromString,
            operations_pb2.Operation.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(SERVICES, service_handlers),
                grpc.method_handlers_generic_handler(OPERATIONS, {"GetOperation": get_operation}),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        self.address = f"127.0.0.1:{port}"
        return self.address

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()

    # -- RPCs ---------------------------------------------------------------------------

    def _get(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            self.requests.append(("GetService", request))
            service = self.services.get(request.name)
        if service is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Resource '{request.name}' was not found")
        return service

    def _create(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = f"{request.parent}/services/{request.service_id}"
        behaviour = self._mutation("CreateService", request, name, context)
        with self._lock:
            if name in self.services:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"Resource '{name}' already exists")
            service = run_v2.Service(request.service)
            service.name = name
            service.uid = str(uuid.uuid4())
            service.generation = 1
            service.create_time = datetime.now(UTC)
            service.uri = _uri(name)
            service.urls = [service.uri]
            return self._settle(service, behaviour)

    def _update(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = request.service.name
        behaviour = self._mutation("UpdateService", request, name, context)
        with self._lock:
            current = self.services.get(name)
            if current is None and not request.allow_missing:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Resource '{name}' was not found")
            service = run_v2.Service(request.service)
            service.uid = current.uid if current else str(uuid.uuid4())
            service.generation = (current.generation if current else 0) + 1
            service.create_time = current.create_time if current else datetime.now(UTC)
            service.uri = _uri(name)
            service.urls = [service.uri]
            return self._settle(service, behaviour)

    def _delete(self, request: Any, context: grpc.ServicerContext) -> Any:
        behaviour = self._mutation("DeleteService", request, request.name, context)
        with self._lock:
            service = self.services.pop(request.name, None)
            if service is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Resource '{request.name}' was not found")
            op = self._operation(request.name)
            op.metadata.Pack(run_v2.Service.pb(service))
            op.response.Pack(run_v2.Service.pb(service))
            return self._store(op, behaviour)

    def _get_operation(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            self.requests.append(("GetOperation", request))
            entry = self._operations.get(request.name)
            if entry is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"operation {request.name} not found")
            done_at, op = entry
            answer = operations_pb2.Operation.FromString(op.SerializeToString())
        if time.monotonic() < done_at:  # still running: no result yet
            answer.done = False
            answer.ClearField("result")
        return answer

    # -- helpers ------------------------------------------------------------------------

    def _mutation(
        self, method: str, request: Any, name: str, context: grpc.ServicerContext
    ) -> RunBehaviour:
        service_id = name.rsplit("/", 1)[-1]
        behaviour = self.behaviours.get(service_id, self.default)
        with self._lock:
            self.requests.append((method, request))
            self._mutations[service_id] = calls = self._mutations.get(service_id, 0) + 1
        if calls <= behaviour.transient_errors:
            context.abort(behaviour.transient_code, f"try again (call {calls})")
        if behaviour.error_code is not None:
            context.abort(behaviour.error_code, behaviour.error_message)
        return behaviour

    def _settle(self, service: Any, behaviour: RunBehaviour) -> Any:
        """Store `service` as it ends up, and answer with its operation (lock held)."""
        revision = f"{service.name}/revisions/{service.name.rsplit('/', 1)[-1]}"
        service.latest_created_revision = f"{revision}-{service.generation:05d}"
        condition = run_v2.Condition(type_="Ready", state=_READY)
        if behaviour.readiness_failure:
            condition = run_v2.Condition(
                type_="Ready",
                state=_FAILED,
                message=behaviour.readiness_failure,
                revision_reason=run_v2.Condition.RevisionReason.HEALTH_CHECK_CONTAINER_ERROR,
            )
        else:
            service.latest_ready_revision = service.latest_created_revision
        service.terminal_condition = condition
        service.conditions = [condition]
        service.observed_generation = service.generation
        self.services[service.name] = service
        op = self._operation(service.name)
        op.metadata.Pack(run_v2.Service.pb(service))
        if behaviour.readiness_failure and behaviour.readiness_as_operation_error:
            error = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=_why(service))
            op.error.CopyFrom(error)
        else:
            op.response.Pack(run_v2.Service.pb(service))
        return self._store(op, behaviour)

    def _operation(self, name: str) -> operations_pb2.Operation:
        location = name.split("/services/")[0]
        return operations_pb2.Operation(name=f"{location}/operations/{uuid.uuid4()}", done=True)

    def _store(self, op: operations_pb2.Operation, behaviour: RunBehaviour) -> Any:
        self._operations[op.name] = (time.monotonic() + behaviour.latency, op)
        answer = operations_pb2.Operation.FromString(op.SerializeToString())
        if behaviour.latency > 0:
            answer.done = False
            answer.ClearField("result")
        return answer


def _uri(name: str) -> str:
    """`https://<service>-<hash>-<region code>.a.run.app`, as Cloud Run names URLs."""
    parts = name.split("/")
    project, region, service = parts[1], parts[3], parts[5]
    digest = hashlib.sha256(project.encode()).hexdigest()[:10]
    code = "".join(word[0] for word in region.split("-"))
    return f"https://{service}-{digest}-{code}.a.run.app"


def _why(service: Any) -> str:
    revision = service.latest_created_revision.rsplit("/", 1)[-1]
    return (
        f"Revision '{revision}' is not ready and cannot serve traffic. "
        f"{service.terminal_condition.message}"
    )
