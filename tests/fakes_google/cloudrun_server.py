"""A fake Cloud Run Admin API v2 (`google.cloud.run.v2.Services`) on a local gRPC port.

Keeps services in memory, answers with long-running operations that finish after the
service's `latency`, and records every request. A service configured with
`readiness_failure` ends with a FAILED Ready condition: by default as Cloud Run reports it
(the operation fails and its metadata holds the service), or, with
`readiness_as_operation_error=False`, as a successful operation whose service is not ready.

Revisions and traffic as Cloud Run keeps them: a create, or an update whose template
differs, makes a revision (`latest_created_revision`, `latest_ready_revision` once ready)
named `template.revision` if given (same name, other template: ALREADY_EXISTS; same
template: that revision again), else `<service>-0000N-xyz`. Revisions are kept, so traffic
can move back. `traffic` (empty: all to the latest ready revision) may name the revision
being created; it is checked (`run_rules`) and reported in `traffic_statuses`, tags with
their URL `https://<tag>---<service>-<hash>-<region code>.a.run.app`. Moving traffic makes
no revision; a revision that fails leaves traffic where it was.

Strict where Cloud Run is strict, each rule citing its source: CPU, memory, billing,
concurrency, traffic and tags (`run_rules`: INVALID_ARGUMENT); actAs on the revision's
account, the Compute Engine default one when empty (PERMISSION_DENIED); secret access of
that account (the operation fails, code 13); IAM policies with etags, setting them needs
run.services.setIamPolicy (`run_access`). With `serve_urls`, each service URL is a local
`identity.Ingress` that admits only what Cloud Run would (invoker and ID token).
"""

from __future__ import annotations

import random
import string
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from google.cloud import run_v2
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.longrunning import operations_pb2
from google.rpc import code_pb2, status_pb2

from tests.fakes_google.identity import Ingress, TokenAuthority
from tests.fakes_google.run_access import (
    PROJECT_NUMBER,
    WORKER_PERMISSIONS,
    IamPolicies,
    refusal,
    secret_problem,
    user_managed,
)
from tests.fakes_google.run_revisions import (
    Revision,
    not_ready_message,
    service_url,
    template_changed,
    traffic_statuses,
)
from tests.fakes_google.run_rules import revision_name_problem, traffic_problems

SERVICES = "google.cloud.run.v2.Services"
OPERATIONS = "google.longrunning.Operations"
_MUTATIONS = ("CreateService", "UpdateService", "DeleteService")
_READY = run_v2.Condition.State.CONDITION_SUCCEEDED
_FAILED = run_v2.Condition.State.CONDITION_FAILED
_LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST


@dataclass
class RunBehaviour:
    """How the fake treats one service (keyed by service id)."""

    latency: float = 0.0  # seconds until an operation is done
    readiness_failure: str = ""  # message of a FAILED Ready condition
    readiness_as_operation_error: bool = True
    readiness_code: int = code_pb2.FAILED_PRECONDITION  # of the failed operation
    transient_errors: int = 0  # the first k Create/Update/Delete calls fail with transient_code
    transient_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    error_code: grpc.StatusCode | None = None  # every Create/Update/Delete fails with this
    error_message: str = "invalid service"


class FakeCloudRun(IamPolicies):
    def __init__(
        self,
        *,
        permissions: frozenset[str] = WORKER_PERMISSIONS,
        may_act_as: Any = user_managed,
        serve_urls: bool = False,
        authority: TokenAuthority | None = None,
    ) -> None:
        self.permissions = permissions  # the caller's (the worker's) on services
        self.may_act_as = may_act_as  # account email -> bool
        self.secret_readers: dict[str, set[str]] = {}  # projects/P/secrets/S -> accounts
        self.policies: dict[str, policy_pb2.Policy] = {}  # service full name -> policy
        self.serve_urls = serve_urls
        self.authority = authority or TokenAuthority()
        self.ingresses: dict[str, Ingress] = {}  # service full name -> its URL's listener
        self.requests: list[tuple[str, Any]] = []
        self.services: dict[str, Any] = {}  # full name -> run_v2.Service
        self.revisions: dict[str, list[Revision]] = {}  # service full name -> oldest first
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

    def serving(self, name: str) -> dict[str, int]:
        """Revision id -> percent of the traffic of the service `name` (full name)."""
        served: dict[str, int] = {}
        with self._lock:
            for status in self.services[name].traffic_statuses:
                served[status.revision] = served.get(status.revision, 0) + status.percent
        return served

    def start(self) -> str:
        operation = operations_pb2.Operation.SerializeToString
        handlers: dict[str, tuple[Any, Any, Any]] = {
            "GetService": (self._get, run_v2.GetServiceRequest, run_v2.Service.serialize),
            "CreateService": (self._create, run_v2.CreateServiceRequest, operation),
            "UpdateService": (self._update, run_v2.UpdateServiceRequest, operation),
            "DeleteService": (self._delete, run_v2.DeleteServiceRequest, operation),
            "ListServices": (
                self._list,
                run_v2.ListServicesRequest,
                run_v2.ListServicesResponse.serialize,
            ),
        }
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        service_handlers = {
            name: grpc.unary_unary_rpc_method_handler(fn, request_type.deserialize, serializer)
            for name, (fn, request_type, serializer) in handlers.items()
        }
        policy = policy_pb2.Policy.SerializeToString
        service_handlers["GetIamPolicy"] = grpc.unary_unary_rpc_method_handler(
            self._get_policy, iam_policy_pb2.GetIamPolicyRequest.FromString, policy
        )
        service_handlers["SetIamPolicy"] = grpc.unary_unary_rpc_method_handler(
            self._set_policy, iam_policy_pb2.SetIamPolicyRequest.FromString, policy
        )
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
        for ingress in self.ingresses.values():
            ingress.stop()

    def grant_secret(self, secret: str, account: str) -> None:
        """`account` gets roles/secretmanager.secretAccessor on `projects/P/secrets/S`."""
        self.secret_readers.setdefault(secret, set()).add(account)

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
        self._refuse(request.service, name, context)
        with self._lock:
            if name in self.services:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"Resource '{name}' already exists")
            service = run_v2.Service(request.service)
            service.name = name
            service.uid = str(uuid.uuid4())
            service.generation = 1
            service.create_time = datetime.now(UTC)
            service.uri, service.urls = self._urls(name)
            return self._settle(service, behaviour, None, context)

    def _update(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = request.service.name
        behaviour = self._mutation("UpdateService", request, name, context)
        self._refuse(request.service, name, context)
        with self._lock:
            current = self.services.get(name)
            if current is None and not request.allow_missing:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Resource '{name}' was not found")
            service = run_v2.Service(request.service)
            service.uid = current.uid if current else str(uuid.uuid4())
            service.generation = (current.generation if current else 0) + 1
            service.create_time = current.create_time if current else datetime.now(UTC)
            service.uri, service.urls = (
                (current.uri, list(current.urls)) if current else self._urls(name)
            )
            return self._settle(service, behaviour, current, context)

    def _delete(self, request: Any, context: grpc.ServicerContext) -> Any:
        behaviour = self._mutation("DeleteService", request, request.name, context)
        with self._lock:
            service = self.services.pop(request.name, None)
            self.revisions.pop(request.name, None)
            if service is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Resource '{request.name}' was not found")
            op = self._operation(request.name)
            op.metadata.Pack(run_v2.Service.pb(service))
            op.response.Pack(run_v2.Service.pb(service))
            return self._store(op, behaviour)

    def _list(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            self.requests.append(("ListServices", request))
            found = [
                s for n, s in sorted(self.services.items()) if n.startswith(request.parent + "/")
            ]
        return run_v2.ListServicesResponse(services=found)

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

    def _settle(
        self, service: Any, behaviour: RunBehaviour, previous: Any, context: grpc.ServicerContext
    ) -> Any:
        """Store `service` as it ends up, and answer with its operation (lock held)."""
        revisions = self.revisions.setdefault(service.name, [])
        pending = self._pending_revision(service, previous, revisions, context)
        known = {r.id: r for r in revisions}
        if pending is not None:  # traffic may name the revision this request creates
            known[pending.id] = pending
        targets = list(service.traffic) or [run_v2.TrafficTarget(type_=_LATEST, percent=100)]
        problem = traffic_problems(service.name.rsplit("/", 1)[-1], targets, known)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        # Output-only fields come from what Cloud Run knows, never from the request.
        service.latest_created_revision = previous.latest_created_revision if previous else ""
        service.latest_ready_revision = previous.latest_ready_revision if previous else ""
        failed = False
        if pending is not None:
            secret_problem = self._secret_problem(service)
            if secret_problem:
                # Observed: the operation fails with code 13 (terraform-docs-samples#168).
                behaviour = RunBehaviour(
                    latency=behaviour.latency,
                    readiness_failure=secret_problem,
                    readiness_code=code_pb2.INTERNAL,
                )
            failed = bool(behaviour.readiness_failure)
            pending.ready = not failed
            revisions.append(pending)
            service.latest_created_revision = pending.name
            if pending.ready:
                service.latest_ready_revision = pending.name
        if failed and previous is not None:
            # A revision that is not ready serves nothing: traffic stays where it was.
            service.traffic = list(previous.traffic)
            targets = list(previous.traffic) or targets
        latest_ready = service.latest_ready_revision.rsplit("/", 1)[-1]
        service.traffic_statuses = traffic_statuses(service.name, targets, latest_ready)
        condition = run_v2.Condition(type_="Ready", state=_READY)
        if failed:
            condition = run_v2.Condition(
                type_="Ready",
                state=_FAILED,
                message=behaviour.readiness_failure,
                revision_reason=run_v2.Condition.RevisionReason.HEALTH_CHECK_CONTAINER_ERROR,
            )
        service.terminal_condition = condition
        service.conditions = [condition]
        service.observed_generation = service.generation
        self.services[service.name] = service
        op = self._operation(service.name)
        op.metadata.Pack(run_v2.Service.pb(service))
        if failed and behaviour.readiness_as_operation_error:
            why = not_ready_message(service)
            error = status_pb2.Status(code=behaviour.readiness_code, message=why)
            op.error.CopyFrom(error)
        else:
            op.response.Pack(run_v2.Service.pb(service))
        return self._store(op, behaviour)

    def _refuse(self, service: Any, name: str, context: grpc.ServicerContext) -> None:
        """Refuse what Cloud Run refuses before it starts an operation."""
        refused = refusal(service, self.may_act_as)
        if refused is not None:
            context.abort(*refused)

    def _secret_problem(self, service: Any) -> str:
        return secret_problem(service, self.secret_readers)

    def _urls(self, name: str) -> tuple[str, list[str]]:
        """(uri, urls) of a new service: the deterministic URL
        https://SERVICE-PROJECT_NUMBER.REGION.run.app and the older hashed one; with
        `serve_urls`, a local ingress first, which is then the uri (lock held)."""
        parts = name.split("/")
        deterministic = f"https://{parts[5]}-{PROJECT_NUMBER}.{parts[3]}.run.app"
        urls = [deterministic, service_url(name)]
        if self.serve_urls:
            ingress = self.ingresses.get(name)
            if ingress is None:
                ingress = Ingress(
                    self.authority,
                    lambda: self.invokers(name),
                    lambda: list(self.services[name].urls) if name in self.services else [],
                )
                self.ingresses[name] = ingress
            urls.insert(0, ingress.url)
        return urls[0] if self.serve_urls else urls[1], urls

    def _pending_revision(
        self, service: Any, previous: Any, revisions: list[Revision], context: grpc.ServicerContext
    ) -> Revision | None:
        """The revision this request creates, or None (lock held). A template naming its
        revision (`template.revision`) must follow `revision_name_problem`; naming one that
        exists is the same revision again if the template is the same, else refused."""
        service_id = service.name.rsplit("/", 1)[-1]
        template = run_v2.RevisionTemplate(service.template)
        named = template.revision
        if named:
            problem = revision_name_problem(service_id, named)
            if problem:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"service.template.revision: {problem}"
                )
            existing = next((r for r in revisions if r.id == named), None)
            if existing is None:
                return Revision(f"{service.name}/revisions/{named}", template, ready=True)
            if template_changed(existing.template, template):
                # Observed: "409 ALREADY_EXISTS: Revision named '...' with different
                # configuration already exists." (firebase/firebase-tools#10148).
                context.abort(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"Revision named '{named}' with different configuration already exists.",
                )
            return None
        if previous is not None and not template_changed(previous.template, template):
            return None
        suffix = "".join(random.choices(string.ascii_lowercase, k=3))
        name = f"{service.name}/revisions/{service_id}-{len(revisions) + 1:05d}-{suffix}"
        return Revision(name, template, ready=True)

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
