"""Who may call a deployed Cloud Run service: the invoker bindings archdeploy plans.

Cloud Run refuses a request without an ID token of an account holding roles/run.invoker
on the service (https://cloud.google.com/run/docs/securing/managing-access), and a new
service has no such binding. archdeploy wires calls by handing a service other services'
URLs in its environment (the director's, as SERVICE_DIRECTOR_URL, to every service, and
each dependency's `uri`, as `<NAME>_URL`, to the services listing it in `dependencies`),
so for each URL that is a Cloud Run service in the caller's project and region, the
caller's own account gets roles/run.invoker on that service, before the caller is
deployed (its startup probe may depend on the call). `deployment.public: true` binds
`allUsers` instead, after the service exists.

Bindings are added, never removed, by read-modify-write of the service's IAM policy with
its etag (GetIamPolicy, SetIamPolicy on the Run v2 Services API); a concurrent change
(ABORTED) is read again. The worker needs run.services.getIamPolicy and
run.services.setIamPolicy: roles/run.developer only has the first, so terraform gives the
worker a custom role with both.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

from shared.adapters.gcp.retry import RetryPolicy
from shared.errors import BackendError

log = logging.getLogger(__name__)

INVOKER = "roles/run.invoker"
PUBLIC = "allUsers"
_CONFLICT_ATTEMPTS = 5
_RPC_TIMEOUT = 60.0
_URL = re.compile(r"https?://[^\s/?#]+")


def called_urls(environment: dict[str, str]) -> list[str]:
    """The origins of the URLs a service is handed in its environment, sorted, unique."""
    found = {m.group(0).rstrip("/") for value in environment.values() if (m := _URL.match(value))}
    return sorted(found)


def service_of_url(services: Iterable[Any], url: str) -> str | None:
    """The full name of the service among `services` that `url` (an origin) addresses."""
    for service in services:
        if url in {u.rstrip("/") for u in [service.uri, *service.urls] if u}:
            return str(service.name)
    return None


class InvokerGrants:
    """Adds invoker bindings through one `run_v2.ServicesClient` and one retry policy."""

    def __init__(self, client: Callable[[], Any], retry: RetryPolicy) -> None:
        self._client = client
        self._retry = retry

    def grant_calls(
        self, parent: str, environment: dict[str, str], member: str, context: str
    ) -> None:
        """`member` may invoke every service of `parent` whose URL is in `environment`.

        Raises:
            BackendError: listing services or setting a policy failed (naming the service
                and the fix when the worker may not set IAM policies).
        """
        urls = called_urls(environment)
        if not urls:
            return
        client = self._client()
        services = self._retry.call(
            lambda: list(client.list_services(parent=parent, retry=None, timeout=_RPC_TIMEOUT)),
            context=context,
            api_call="ListServices",
        )
        for url in urls:
            name = service_of_url(services, url)
            if name is None:  # not a Cloud Run service of this region: nothing to grant
                log.debug("%s: %s is no Cloud Run service in %s", context, url, parent)
                continue
            self.grant(name, member, context)

    def grant(self, name: str, member: str, context: str) -> None:
        """Bind `member` to roles/run.invoker on the service `name`; no-op when it is."""
        from google.api_core import exceptions as api
        from google.iam.v1 import iam_policy_pb2

        client = self._client()
        for _ in range(_CONFLICT_ATTEMPTS):
            policy = self._call(
                client.get_iam_policy,
                context,
                "GetIamPolicy",
                request=iam_policy_pb2.GetIamPolicyRequest(resource=name),
            )
            if not _add_member(policy, member):
                return
            request = iam_policy_pb2.SetIamPolicyRequest(resource=name, policy=policy)
            try:
                self._call(
                    client.set_iam_policy, context, "SetIamPolicy", api.Aborted, request=request
                )
            except api.Aborted:  # the etag is stale: someone changed the policy meanwhile
                continue
            log.info("%s: %s may now invoke %s", context, member, name)
            return
        raise BackendError(
            f"{context}: SetIamPolicy on {name} kept meeting concurrent changes "
            f"({_CONFLICT_ATTEMPTS} attempts); deploy again",
            retryable=True,
        )

    def _call(self, method: Any, context: str, api_call: str, *passthrough: type, **kw: Any) -> Any:
        from google.api_core import exceptions as api

        try:
            return self._retry.call(
                lambda: method(**kw, retry=None, timeout=_RPC_TIMEOUT),
                context=context,
                api_call=api_call,
                passthrough=(*passthrough, api.PermissionDenied),
            )
        except api.PermissionDenied as exc:
            raise BackendError(
                f"{context}: {api_call} refused: {exc.message} (give archdeploy's worker "
                "run.services.getIamPolicy and run.services.setIamPolicy, as terraform's "
                "archdeployRunInvokerAdmin role does; roles/run.developer cannot set them)"
            ) from exc


def _add_member(policy: Any, member: str) -> bool:
    """Add `member` to the invoker binding of `policy`; False when it is there already."""
    for binding in policy.bindings:
        if binding.role == INVOKER and not binding.HasField("condition"):
            if member in binding.members:
                return False
            binding.members.append(member)
            return True
    policy.bindings.add(role=INVOKER, members=[member])
    return True
