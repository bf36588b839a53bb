"""Cloud Run v2: create-or-update, readiness, traffic (resources: `run_resources`).

A deploy records its `config_fingerprint` in the annotation `archdeploy.dev/config-fingerprint`
of the service and of its revision template, and sends all traffic to the latest ready
revision. `deployed_from` reads it back, but only while that revision is what serves: after
a rollback pinned traffic to an older revision, the fingerprint is unknown (""), so the next
run deploys again, which also returns traffic to the latest revision.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from shared.adapters.gcp.retry import RetryPolicy, describe_api_error
from shared.deployer import Deployed
from shared.errors import BackendError

log = logging.getLogger(__name__)

FINGERPRINT_ANNOTATION = "archdeploy.dev/config-fingerprint"
_SERVICE_ID = re.compile(r"[a-z]([-a-z0-9]{0,47}[a-z0-9])?")


def service_path(project: str, region: str, service: str) -> str:
    return f"projects/{project}/locations/{region}/services/{service}"


def check_service_id(service: str) -> None:
    """Cloud Run's rule for service ids, checked before any call.

    Raises:
        ValueError: naming the rule the id breaks.
    """
    if not _SERVICE_ID.fullmatch(service):
        raise ValueError(
            f"{service!r} is not a valid Cloud Run service name: use lowercase letters, "
            "digits and hyphens, start with a letter, end without a hyphen, at most 49 "
            "characters (rename the service in the architecture file)"
        )


def service_account_email(account: str, project: str) -> str:
    """A full service account email; a bare name is taken as one of `project`'s accounts."""
    if not account or "@" in account:
        return account
    return f"{account}@{project}.iam.gserviceaccount.com"


def readiness_problem(service: Any) -> str | None:
    """Why the service's Ready condition did not succeed, or None when it did."""
    from google.cloud import run_v2

    condition = service.terminal_condition
    if condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED:
        return None
    state = run_v2.Condition.State(condition.state).name
    why = condition.message or "Cloud Run gave no message"
    reasons = [
        _enum_name(getattr(condition, field))
        for field in ("reason", "revision_reason", "execution_reason")
        if field in condition  # the one reason field of the oneof that is set
    ]
    reason = f" (reason {', '.join(r for r in reasons if r)})" if any(reasons) else ""
    return f"its Ready condition is {state}: {why}{reason}"


def serving_revision(service: Any) -> tuple[str, bool]:
    """(full name of the revision that serves all traffic, whether it is the latest ready
    one). With traffic split (by hand), the latest ready revision stands for the service."""
    from google.cloud import run_v2

    latest = service.latest_ready_revision
    by_revision = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
    targets = list(service.traffic_statuses) or list(service.traffic)
    for target in targets:
        if target.type_ == by_revision and target.percent == 100 and target.revision:
            name = f"{service.name}/revisions/{revision_id(target.revision)}"
            return name, revision_id(name) == revision_id(latest)
    return latest, True


def revision_id(revision: str) -> str:
    """`svc-00002-abc` of a revision's full resource name (or of the id itself)."""
    return revision.rsplit("/", 1)[-1]


def deployed_from(service: Any) -> Deployed | None:
    """What a Ready service serves, with the fingerprint its deploy recorded."""
    if readiness_problem(service) is not None or not service.latest_ready_revision:
        return None
    revision, latest = serving_revision(service)
    containers = list(service.template.containers)
    return Deployed(
        url=service.uri,
        image=containers[0].image if containers else "",
        fingerprint=service.annotations.get(FINGERPRINT_ANNOTATION, "") if latest else "",
        revision=revision,
    )


def _enum_name(value: Any) -> str:
    return str(getattr(value, "name", value))


class CloudRunServices:
    """The Cloud Run half of `GcpDeployer`: create or update, wait for Ready, delete."""

    def __init__(
        self,
        client: Callable[[], Any],
        retry: RetryPolicy,
        *,
        timeout: float,
        poll_interval: float,
        rpc_timeout: float = 60.0,
    ) -> None:
        self._client = client
        self._retry = retry
        self._timeout = timeout
        self._poll_interval = poll_interval
        self._rpc_timeout = rpc_timeout

    def deploy(self, name: str, resource: Any, context: str) -> str:
        """Create the service `name` (a full resource name) or update it; return its URL.

        Raises:
            BackendError: an API call failed, or the revision did not become ready.
        """
        from google.api_core import exceptions as api

        client = self._client()
        parent, _, service_id = name.rpartition("/services/")
        try:
            self._call(client.get_service, context, "GetService", api.NotFound, name=name)
        except api.NotFound:
            try:
                operation = self._call(
                    client.create_service,
                    context,
                    "CreateService",
                    api.AlreadyExists,  # created meanwhile by a duplicate delivery
                    parent=parent,
                    service=resource,
                    service_id=service_id,
                )
                return self._await_ready(operation, context, "CreateService")
            except api.AlreadyExists:
                pass
        updated = type(resource)(resource)
        updated.name = name
        operation = self._call(client.update_service, context, "UpdateService", service=updated)
        return self._await_ready(operation, context, "UpdateService")

    def deployed(self, name: str, context: str) -> Deployed | None:
        """What the service `name` serves, or None: not there, not Ready, or no answer."""
        from google.api_core import exceptions as api

        client = self._client()
        try:
            service = self._call(client.get_service, context, "GetService", api.NotFound, name=name)
        except api.NotFound:
            return None
        except BackendError as exc:  # a miss only costs a deploy; the deploy will say more
            log.warning("%s", exc)
            return None
        return deployed_from(service)

    def get(self, name: str, context: str) -> Any:
        """The service `name` as Cloud Run has it (`run_v2.Service`), or None if not there.

        Raises:
            BackendError: Cloud Run did not answer.
        """
        from google.api_core import exceptions as api

        client = self._client()
        try:
            return self._call(client.get_service, context, "GetService", api.NotFound, name=name)
        except api.NotFound:
            return None

    def create(self, name: str, resource: Any, context: str) -> Any:
        """Create the service `name` from `resource`; the service once Ready.

        Raises:
            google.api_core.exceptions.AlreadyExists: as Cloud Run answered it.
            BackendError: Cloud Run refused otherwise, or it did not become ready.
        """
        from google.api_core import exceptions as api

        parent, _, service_id = name.rpartition("/services/")
        client = self._client()
        operation = self._call(
            client.create_service,
            context,
            "CreateService",
            api.AlreadyExists,
            parent=parent,
            service=resource,
            service_id=service_id,
        )
        return self._ready_service(operation, context, "CreateService")

    def update(self, service: Any, context: str) -> Any:
        """Send `service` (named) as UpdateService; the service once Ready.

        Raises:
            BackendError: Cloud Run refused (with what it answered), or it did not become ready.
        """
        client = self._client()
        operation = self._call(client.update_service, context, "UpdateService", service=service)
        return self._ready_service(operation, context, "UpdateService")

    def route_all_traffic(self, name: str, revision: str, context: str) -> str:
        """Send 100% of the service's traffic to `revision` (an id or full name) as a
        REVISION target, keeping its tags; wait until the service is Ready, return its
        URL. Changes nothing if it serves all traffic already.

        Raises:
            BackendError: the service or revision is not there (Cloud Run's answer), or the
                service did not become ready.
        """
        from shared.adapters.gcp.run_traffic import traffic_targets

        client = self._client()
        service = self._call(client.get_service, context, "GetService", name=name)
        serving, _ = serving_revision(service)
        if revision_id(serving) == revision_id(revision):
            # E.g. the deploy that failed left its revision unready: traffic never moved.
            log.info("%s: %s serves all traffic already", context, revision_id(revision))
            return str(service.uri)
        updated = type(service)(service)  # a copy to send back
        tags = {s.tag: s.revision for s in service.traffic_statuses if s.tag}
        updated.traffic = traffic_targets({revision_id(revision): 100}, tags)
        updated.etag = ""  # no compare-and-set: a rollback wins over what changed meanwhile
        return str(self.update(updated, context).uri)

    def delete(self, name: str, context: str) -> None:
        """Delete the service `name`; NotFound counts as done."""
        from google.api_core import exceptions as api

        client = self._client()
        try:
            operation = self._call(
                client.delete_service, context, "DeleteService", api.NotFound, name=name
            )
        except api.NotFound:
            log.info("%s: %s is already gone", context, name)
            return
        self._wait(operation, context, "DeleteService")

    def _call(
        self, method: Any, context: str, api_call: str, *passthrough: type, **kwargs: Any
    ) -> Any:
        return self._retry.call(
            lambda: method(**kwargs, retry=None, timeout=self._rpc_timeout),
            context=context,
            api_call=api_call,
            passthrough=passthrough,
        )

    def _await_ready(self, operation: Any, context: str, api_call: str) -> str:
        uri: str = self._ready_service(operation, context, api_call).uri
        return uri

    def _ready_service(self, operation: Any, context: str, api_call: str) -> Any:
        service = self._wait(operation, context, api_call)
        problem = readiness_problem(service)
        if problem:
            raise BackendError(f"{context}: the service did not become ready: {problem}")
        log.info("%s: ready at %s", context, service.uri)
        return service

    def _wait(self, operation: Any, context: str, api_call: str) -> Any:
        from google.api_core import exceptions as api

        if not self._retry.wait_done(
            operation, timeout=self._timeout, interval=self._poll_interval, context=context
        ):
            raise BackendError(
                f"{context}: {api_call} did not finish within {self._timeout:g}s "
                "(raise deploy_timeout, or look at the service in the console)",
                retryable=True,
            )
        try:
            return operation.result()
        except api.GoogleAPICallError as exc:
            snapshot = operation.metadata  # the service as the failed operation left it
            problem = readiness_problem(snapshot) if snapshot is not None else None
            why = describe_api_error(exc) + (f"; {problem}" if problem else "")
            outcome = "failed" if api_call == "DeleteService" else "did not become ready"
            raise BackendError(f"{context}: {api_call} {outcome}: {why}") from exc
