"""A fake Cloud Build API on a local gRPC port, for the real `CloudBuildClient`.

Requests are decoded with the request types' own `deserialize`, so a request the real API
would not parse fails here too. Every request is kept in `requests` for assertions. A
build finishes `latency` seconds after it is created (on a timer, so `submit_build` can
return before it does) and then calls `on_terminal(build)`, which a test can use to
publish what Cloud Build publishes on the `cloud-builds` topic (see `notification`).

ListBuilds serves the build history newest first, paged, and understands the filters
archdeploy sends: `field="value"` terms on `tags` and `status` joined by `AND` (values
double-quoted, as Cloud Build wants). Any other filter is refused with INVALID_ARGUMENT,
so a filter the fake cannot check never passes silently.

Builds live in a location, as on Cloud Build. GetBuild and CancelBuild by `name`
(projects/P/locations/L/builds/ID) reach location L, and only with the routing header
`x-goog-request-params: location=L` the client sends for such a name; by `project_id` and
`id` they reach `global` only ("This method only cancels builds in the "global" region when
using the legacy resource path", REST reference projects.builds.cancel), so a regional
build is NOT_FOUND "Requested entity was not found." (backstage/backstage#21463).
GetOperation of a regional operation needs the same header, which the operations client
does not send: NOT_FOUND, as in googleapis/google-cloud-python#12123.

A user-specified `build.service_account` must be `projects/P/serviceAccounts/ACCOUNT`, the
caller must be able to act as it ("the users submitting the build must have the
iam.serviceAccounts.actAs permission on the service account", Cloud Build default service
account change), and the build must say where logs go (logs_bucket, the
REGIONAL_USER_OWNED_BUCKET behaviour, or CLOUD_LOGGING_ONLY / NONE), else INVALID_ARGUMENT
with Cloud Build's observed message.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from google.cloud.devtools import cloudbuild_v1 as cb
from google.longrunning import operations_pb2
from google.rpc import code_pb2, status_pb2

from shared.adapters.gcp.cloud_build import task_parts_from_tags

CLOUD_BUILD = "google.devtools.cloudbuild.v1.CloudBuild"
OPERATIONS = "google.longrunning.Operations"
PROJECT_NUMBER = "123456789012"
_FILTER_TERM = re.compile(r'(tags|status)="([^"]*)"')
_TERMINAL_CODES = {
    "FAILURE": code_pb2.UNKNOWN,
    "INTERNAL_ERROR": code_pb2.INTERNAL,
    "TIMEOUT": code_pb2.DEADLINE_EXCEEDED,
    "CANCELLED": code_pb2.CANCELLED,
    "EXPIRED": code_pb2.DEADLINE_EXCEEDED,
}


@dataclass
class BuildBehaviour:
    """How the fake treats the builds of one service."""

    latency: float = 0.0  # seconds from CreateBuild to a terminal status
    status: str = "SUCCESS"  # the terminal status
    status_detail: str = ""
    digest: str = ""  # reported for the pushed image; default derived from the build id
    transient_errors: int = 0  # the first k CreateBuild calls fail with transient_code
    transient_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    error_code: grpc.StatusCode | None = None  # every CreateBuild fails with this
    error_message: str = "invalid build"


def notification(build: Any) -> tuple[bytes, dict[str, str]]:
    """What Cloud Build publishes on `cloud-builds`: the Build as REST JSON, plus attributes."""
    data = cb.Build.to_json(build, use_integers_for_enums=False, indent=None).encode()
    return data, {"buildId": build.id, "status": cb.Build.Status(build.status).name}


_ACCOUNT = re.compile(r"projects/[^/]+/serviceAccounts/([^/]+)")
_LOG_OPTIONS = {"CLOUD_LOGGING_ONLY", "NONE"}


def _account_problem(build: Any, may_act_as: Callable[[str], bool]) -> tuple[Any, str] | None:
    if not build.service_account:
        return None
    match = _ACCOUNT.fullmatch(build.service_account)
    if match is None:
        return grpc.StatusCode.INVALID_ARGUMENT, (
            "build.service_account must be of the format "
            "projects/{PROJECT_ID}/serviceAccounts/{ACCOUNT}"
        )
    logging = cb.BuildOptions.LoggingMode(build.options.logging).name
    behaviour = cb.BuildOptions.DefaultLogsBucketBehavior(
        build.options.default_logs_bucket_behavior
    ).name
    if not (
        build.logs_bucket or behaviour == "REGIONAL_USER_OWNED_BUCKET" or logging in _LOG_OPTIONS
    ):
        return grpc.StatusCode.INVALID_ARGUMENT, (
            "generic::invalid_argument: if 'build.service_account' is specified, the build "
            "must either (a) specify 'build.logs_bucket', (b) use the "
            "REGIONAL_USER_OWNED_BUCKET build.options.default_logs_bucket_behavior option, "
            "or (c) use either CLOUD_LOGGING_ONLY / NONE logging options"
        )
    if not may_act_as(match[1]):
        return grpc.StatusCode.PERMISSION_DENIED, (
            f"Permission 'iam.serviceaccounts.actAs' denied on service account {match[1]} "
            "(or it may not exist)."
        )
    return None


def _user_managed(account: str) -> bool:
    return account.endswith(".iam.gserviceaccount.com")


class FakeCloudBuild:
    def __init__(self, *, may_act_as: Callable[[str], bool] = _user_managed) -> None:
        self.may_act_as = may_act_as  # which build accounts the caller may act as
        self.requests: list[tuple[str, Any]] = []  # (method, request message)
        self.builds: dict[str, Any] = {}
        self.behaviours: dict[str, BuildBehaviour] = {}
        self.default = BuildBehaviour()
        self.on_terminal: Callable[[Any], None] | None = None
        self.address = ""
        self._operations: dict[str, operations_pb2.Operation] = {}
        self._op_of_build: dict[str, str] = {}
        self._creates: dict[str, int] = {}
        self._timers: dict[str, threading.Timer] = {}
        self._lock = threading.RLock()
        self._server: grpc.Server | None = None

    # -- test API -----------------------------------------------------------------------

    def behave(self, service: str, **settings: Any) -> None:
        self.behaviours[service] = BuildBehaviour(**settings)

    def calls(self, method: str) -> list[Any]:
        with self._lock:
            return [request for name, request in self.requests if name == method]

    def start(self) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(CLOUD_BUILD, self._build_handlers()),
                grpc.method_handlers_generic_handler(OPERATIONS, self._operation_handlers()),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        self.address = f"127.0.0.1:{port}"
        return self.address

    def stop(self) -> None:
        with self._lock:
            for timer in self._timers.values():
                timer.cancel()
        if self._server is not None:
            self._server.stop(grace=None).wait()

    def _build_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        operation = operations_pb2.Operation.SerializeToString
        return {
            "CreateBuild": grpc.unary_unary_rpc_method_handler(
                self._create_build, cb.CreateBuildRequest.deserialize, operation
            ),
            "GetBuild": grpc.unary_unary_rpc_method_handler(
                self._get_build, cb.GetBuildRequest.deserialize, cb.Build.serialize
            ),
            "CancelBuild": grpc.unary_unary_rpc_method_handler(
                self._cancel_build, cb.CancelBuildRequest.deserialize, cb.Build.serialize
            ),
            "ListBuilds": grpc.unary_unary_rpc_method_handler(
                self._list_builds, cb.ListBuildsRequest.deserialize, cb.ListBuildsResponse.serialize
            ),
        }

    def _operation_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return {
            "GetOperation": grpc.unary_unary_rpc_method_handler(
                self._get_operation,
                operations_pb2.GetOperationRequest.FromString,
                operations_pb2.Operation.SerializeToString,
            )
        }

    # -- RPCs ---------------------------------------------------------------------------

    def _create_build(self, request: Any, context: grpc.ServicerContext) -> Any:
        parts = task_parts_from_tags(request.build.tags)
        service = parts[2] if parts else ""
        behaviour = self.behaviours.get(service, self.default)
        with self._lock:
            self.requests.append(("CreateBuild", request))
            self._creates[service] = calls = self._creates.get(service, 0) + 1
        if calls <= behaviour.transient_errors:
            context.abort(behaviour.transient_code, f"try again (call {calls})")
        if behaviour.error_code is not None:
            context.abort(behaviour.error_code, behaviour.error_message)
        refused = _account_problem(request.build, self.may_act_as)
        if refused is not None:
            context.abort(*refused)
        build = self._new_build(request)
        op = operations_pb2.Operation(name=f"{_location(request)}/operations/{uuid.uuid4()}")
        op.metadata.Pack(cb.BuildOperationMetadata.pb(cb.BuildOperationMetadata(build=build)))
        with self._lock:
            self.builds[build.id] = build
            self._operations[op.name] = op
            self._op_of_build[build.id] = op.name
        if behaviour.latency <= 0:
            self._finish(build.id, behaviour)
        else:
            timer = threading.Timer(behaviour.latency, self._finish, (build.id, behaviour))
            timer.daemon = True
            with self._lock:
                self._timers[build.id] = timer
            timer.start()
        with self._lock:
            return operations_pb2.Operation.FromString(
                self._operations[op.name].SerializeToString()
            )

    def _get_build(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            self.requests.append(("GetBuild", request))
            return self._routed(request, context)

    def _cancel_build(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            self.requests.append(("CancelBuild", request))
            build = self._routed(request, context)
            timer = self._timers.pop(build.id, None)
        if timer is not None:
            timer.cancel()
            self._finish(build.id, BuildBehaviour(status="CANCELLED"))
        return self.builds[build.id]

    def _routed(self, request: Any, context: grpc.ServicerContext) -> Any:
        """The build `request` reaches, given its name or legacy path and routing header."""
        if request.name:
            name = request.name
            location = name.split("/")[3] if name.count("/") == 5 else ""
            if location != "global" and _routing_location(context) != location:
                context.abort(grpc.StatusCode.NOT_FOUND, "Requested entity was not found.")
        else:
            name = f"projects/{request.project_id}/locations/global/builds/{request.id}"
        build = self.builds.get(name.rsplit("/", 1)[-1])
        if build is None or build.name != name:
            context.abort(grpc.StatusCode.NOT_FOUND, "Requested entity was not found.")
        return build

    def _list_builds(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            self.requests.append(("ListBuilds", request))
            builds = list(self.builds.values())
        try:
            wanted = _parse_filter(request.filter)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        location = request.parent or f"projects/{request.project_id}/locations/global"
        matching = [
            b
            for b in builds
            if b.project_id == request.project_id
            and b.name.startswith(location + "/builds/")
            and all(_matches(b, field, value) for field, value in wanted)
        ]
        matching.sort(key=lambda b: b.create_time, reverse=True)
        start = int(request.page_token or 0)
        size = request.page_size or 50
        page = matching[start : start + size]
        more = start + size < len(matching)
        return cb.ListBuildsResponse(builds=page, next_page_token=str(start + size) if more else "")

    def _get_operation(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            self.requests.append(("GetOperation", request))
            op = self._operations.get(request.name)
            copy = operations_pb2.Operation.FromString(op.SerializeToString()) if op else None
        location = request.name.split("/")[3] if request.name.count("/") == 5 else ""
        if location not in ("", "global") and _routing_location(context) != location:
            copy = None  # looked up in global: googleapis/google-cloud-python#12123
        if copy is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"operation {request.name} not found")
        return copy

    # -- build lifecycle ----------------------------------------------------------------

    def _new_build(self, request: Any) -> Any:
        build = cb.Build(request.build)
        build.id = str(uuid.uuid4())
        build.project_id = request.project_id
        build.name = f"{_location(request)}/builds/{build.id}"
        build.status = cb.Build.Status.QUEUED
        build.create_time = datetime.now(UTC)
        region = _location(request).rsplit("/", 1)[-1]
        build.log_url = (
            f"https://console.cloud.google.com/cloud-build/builds;region={region}/"
            f"{build.id}?project={PROJECT_NUMBER}"
        )
        return build

    def _finish(self, build_id: str, behaviour: BuildBehaviour) -> None:
        with self._lock:
            self._timers.pop(build_id, None)
            build = cb.Build(self.builds[build_id])
            build.status = cb.Build.Status[behaviour.status]
            build.finish_time = datetime.now(UTC)
            if behaviour.status == "SUCCESS":
                digest = behaviour.digest or "sha256:" + uuid.UUID(build_id).hex * 2
                build.results = cb.Results(
                    images=[cb.BuiltImage(name=name, digest=digest) for name in build.images]
                )
            else:
                build.status_detail = behaviour.status_detail
            self.builds[build_id] = build
            op = self._operations[self._op_of_build[build_id]]
            op.metadata.Pack(cb.BuildOperationMetadata.pb(cb.BuildOperationMetadata(build=build)))
            if behaviour.status == "SUCCESS":
                op.response.Pack(cb.Build.pb(build))
            else:
                code = _TERMINAL_CODES.get(behaviour.status, code_pb2.UNKNOWN)
                message = "Build failed; check build logs for details"
                op.error.CopyFrom(status_pb2.Status(code=code, message=message))
            op.done = True
        if self.on_terminal is not None:
            self.on_terminal(build)


def _parse_filter(text: str) -> list[tuple[str, str]]:
    """`tags="a" AND status="SUCCESS"` -> [("tags", "a"), ("status", "SUCCESS")]."""
    if not text.strip():
        return []
    terms = []
    for term in text.split(" AND "):
        match = _FILTER_TERM.fullmatch(term.strip())
        if match is None:
            raise ValueError(f"the fake does not understand the filter term {term!r} in {text!r}")
        terms.append((match[1], match[2]))
    return terms


def _matches(build: Any, field: str, value: str) -> bool:
    if field == "tags":
        return value in build.tags
    return bool(cb.Build.Status(build.status).name == value)


def _routing_location(context: grpc.ServicerContext) -> str:
    """The `location` of the request's x-goog-request-params header, or ""."""
    for key, value in context.invocation_metadata():
        if key == "x-goog-request-params":
            for part in str(value).split("&"):
                field, _, text = part.partition("=")
                if field == "location":
                    return text
    return ""


def _location(request: Any) -> str:
    return request.parent or f"projects/{request.project_id}/locations/global"
