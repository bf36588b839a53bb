"""Who may do what in the fake Cloud Run: the caller's permissions, actAs, secret access.

Sources (quotes in /work/notes/gcp-rules.md, sections 6 to 8):
- run/docs/securing/managing-access: roles/run.developer "Can get but not set IAM
  policies"; only run.admin (and owner) hold run.services.setIamPolicy.
- run/docs/configuring/service-accounts: deploying a revision that runs as an account needs
  iam.serviceAccounts.actAs on it; with none, the revision runs as the Compute Engine
  default account ("Introduction to service identity").
- run/docs/configuring/secrets: "Cloud Run checks all the secrets you use ... the service
  account that runs the container has permission to access these secrets."
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any

import grpc
from google.iam.v1 import policy_pb2

from tests.fakes_google.run_rules import template_problems

PROJECT_NUMBER = "123456789012"
INVOKER = "roles/run.invoker"
# roles/run.developer (run/docs/reference/iam/roles): everything on services but setting
# IAM policies.
RUN_DEVELOPER = frozenset(
    {
        "run.services.get",
        "run.services.list",
        "run.services.create",
        "run.services.update",
        "run.services.delete",
        "run.services.getIamPolicy",
    }
)
# What terraform/iam.tf gives archdeploy's worker: run.developer and the custom role
# archdeployRunInvokerAdmin (set the invoker bindings of the calls it wires).
WORKER_PERMISSIONS = RUN_DEVELOPER | {"run.services.setIamPolicy"}


def compute_default_account(project_number: str = PROJECT_NUMBER) -> str:
    return f"{project_number}-compute@developer.gserviceaccount.com"


def user_managed(account: str) -> bool:
    """An account terraform grants the worker actAs on: any user-managed one."""
    return account.endswith(".iam.gserviceaccount.com")


def refusal(service: Any, may_act_as: Callable[[str], bool]) -> tuple[grpc.StatusCode, str] | None:
    """(status, message) Cloud Run answers a Create/UpdateService with before any operation."""
    problems = template_problems(service.template)
    if problems:
        text = "; ".join(f"{field}: {why}" for field, why in problems)
        return grpc.StatusCode.INVALID_ARGUMENT, text
    account = service.template.service_account or compute_default_account()
    if not may_act_as(account):
        # Observed wording (lowercase "serviceaccounts"), gcp-rules.md section 7.
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"Permission 'iam.serviceaccounts.actAs' denied on service account {account} "
            "(or it may not exist).",
        )
    return None


def secret_problem(service: Any, readers: dict[str, set[str]]) -> str:
    """Why the revision's account may not read a secret it references (the observed
    message, terraform-docs-samples#168), or ""."""
    account = service.template.service_account or compute_default_account()
    project = service.name.split("/")[1]
    for container in service.template.containers:
        for i, env in enumerate(container.env):
            ref = env.value_source.secret_key_ref
            if not ref.secret:
                continue
            secret = ref.secret
            if not secret.startswith("projects/"):
                secret = f"projects/{project}/secrets/{secret}"
            if account not in readers.get(secret, set()):
                return (
                    f"spec.template.spec.containers[0].env[{i}].value_from.secret_key_ref"
                    f".name: Permission denied on secret: {secret}/versions/"
                    f"{ref.version or 'latest'} for Revision service account {account}. "
                    "The service account used must be granted the 'Secret Manager Secret "
                    "Accessor' role (roles/secretmanager.secretAccessor) at the secret, "
                    "project or higher level."
                )
    return ""


class IamPolicies:
    """GetIamPolicy / SetIamPolicy of Run v2 Services (service.proto: SetIamPolicy
    "Overwrites any existing policy"), with etags: a stale one is ABORTED."""

    permissions: frozenset[str]
    policies: dict[str, policy_pb2.Policy]
    services: dict[str, Any]
    requests: list[tuple[str, Any]]
    _lock: threading.Lock

    def invokers(self, name: str) -> set[str]:
        """Members holding roles/run.invoker on the service `name` (full name)."""
        with self._lock:
            policy = self.policies.get(name, policy_pb2.Policy())
            return {m for b in policy.bindings if b.role == INVOKER for m in b.members}

    def _get_policy(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            self.requests.append(("GetIamPolicy", request))
            if request.resource not in self.services:
                context.abort(
                    grpc.StatusCode.NOT_FOUND, f"Resource '{request.resource}' was not found"
                )
            return self.policies.setdefault(request.resource, policy_pb2.Policy(etag=b"BwY0"))

    def _set_policy(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            self.requests.append(("SetIamPolicy", request))
        if "run.services.setIamPolicy" not in self.permissions:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Permission 'run.services.setIamPolicy' denied on resource "
                f"'{request.resource}' (or resource may not exist).",
            )
        with self._lock:
            if request.resource not in self.services:
                context.abort(
                    grpc.StatusCode.NOT_FOUND, f"Resource '{request.resource}' was not found"
                )
            current = self.policies.setdefault(request.resource, policy_pb2.Policy(etag=b"BwY0"))
            # SetIamPolicy "Overwrites any existing policy"; a stale etag is a concurrent change.
            if request.policy.etag and request.policy.etag != current.etag:
                context.abort(grpc.StatusCode.ABORTED, "There were concurrent policy changes.")
            policy = policy_pb2.Policy()
            policy.CopyFrom(request.policy)
            policy.etag = hashlib.sha256(current.etag + policy.SerializeToString()).digest()[:8]
            self.policies[request.resource] = policy
            return policy
