"""`GcpDeployer`'s `TrafficDeployer` ability: Cloud Run revisions, tags and traffic.

A stage updates the service with the new template, its revision named
`<service>-<tag>-<digest>` (`run_traffic.revision_name`), and with traffic pinned to what
serves now (REVISION targets, percents unchanged) plus a 0% target tagged `tag` on the
new revision: the stable URL keeps serving the old revision, and the tag's URL
(`https://<tag>---<service>-<hash>-<region>.a.run.app`, from `traffic_statuses[].uri`)
reaches only the new one. A service that does not exist yet is created with its first
revision taking all traffic (Cloud Run serves nothing otherwise): `Staged.created`.
`set_traffic` and `untag` send the service back with new REVISION targets, keeping tags.

Every call waits for the operation and the service's Ready condition, like a deploy.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.adapters.gcp.cloud_run import CloudRunServices, check_service_id, service_path
from shared.adapters.gcp.cloud_run import service_account_email as full_account_email
from shared.adapters.gcp.run_iam import PUBLIC, InvokerGrants
from shared.adapters.gcp.run_resources import service_resource
from shared.adapters.gcp.run_traffic import (
    format_percents,
    revision_name,
    staged_targets,
    tag_problem,
    traffic_of,
    traffic_targets,
)
from shared.architecture.model import DeploymentSpec
from shared.deployer import Staged, Target, Traffic, config_fingerprint, current_target
from shared.errors import BackendError

log = logging.getLogger(__name__)

# Set on the service by the stage that created it, to the revision it created: a
# redelivered stage then still knows it created the service. Any later update drops it.
CREATED_BY_STAGE = "archdeploy.dev/created-by-stage"


class CloudRunReleases:
    """Mixed into `GcpDeployer`, which provides the attributes below."""

    project_id: str
    region: str
    default_service_account: str
    _run: CloudRunServices
    _grants: InvokerGrants

    def stage(
        self,
        service_name: str,
        service_account_email: str,
        spec: DeploymentSpec,
        *,
        tag: str,
        target: Target | None = None,
    ) -> Staged:
        """Deploy `spec` as a new revision tagged `tag` with no traffic; once it is Ready.

        Staging the same configuration under the same tag again returns the same revision
        without an update.

        Raises:
            BackendError: a bad tag, Cloud Run refused (naming what it answered), or the
                revision did not become ready.
        """
        target = target or current_target()
        context = f"staging {service_name} as {tag}"
        problem = tag_problem(tag)
        if problem:
            raise BackendError(f"{context}: {problem}")
        name, resource = self._prepare(service_name, service_account_email, spec, target, context)
        revision = revision_name(service_name, tag, resource.template)
        resource.template.revision = revision
        current = self._run.get(name, context)
        service = None if current is None else self._stage_beside(current, resource, tag, context)
        if service is None:
            service = self._create_staged(name, resource, tag, context)
        if spec.public:
            self._grants.grant(name, PUBLIC, context)
        url = traffic_of(service).tag_urls.get(tag, "")
        if not url:
            raise BackendError(f"{context}: Cloud Run reports no URL for the tag {tag}")
        created = service.annotations.get(CREATED_BY_STAGE, "") == revision
        return Staged(revision=revision, tag=tag, url=url, created=created)

    def _stage_beside(self, current: Any, resource: Any, tag: str, context: str) -> Any:
        """Update `current` with the template of `resource` under `tag`; the service."""
        revision = resource.template.revision
        if traffic_of(current).tags.get(tag) == revision:
            log.info("%s: %s is staged already", context, revision)
            return current
        resource.name = current.name
        resource.traffic = staged_targets(current, revision, tag)
        return self._run.update(resource, context)

    def _create_staged(self, name: str, resource: Any, tag: str, context: str) -> Any:
        """Create the service, its first revision taking all traffic (Cloud Run will not
        create a service that serves nothing); created meanwhile (a duplicate delivery),
        stage beside what it serves."""
        from google.api_core import exceptions as api

        revision = resource.template.revision
        created = type(resource)(resource)
        created.annotations[CREATED_BY_STAGE] = revision
        created.traffic = traffic_targets({revision: 100}, {tag: revision})
        try:
            return self._run.create(name, created, context)
        except api.AlreadyExists:
            return self._stage_beside(self._existing(name, context), resource, tag, context)

    def traffic(self, service_name: str, *, target: Target | None = None) -> Traffic | None:
        """The service's traffic by revision (LATEST resolved), tags and their URLs, or
        None if the service does not exist.

        Raises:
            BackendError: Cloud Run did not answer.
        """
        name = service_path(*self._service_where(target or current_target()), service_name)
        service = self._run.get(name, f"reading the traffic of {service_name}")
        return None if service is None else traffic_of(service)

    def set_traffic(
        self, service_name: str, percents: dict[str, int], *, target: Target | None = None
    ) -> Traffic:
        """Serve the stable URL from these revisions by percent (REVISION targets), keeping
        every tag; once the service is Ready. Nothing is sent if it serves so already.

        Raises:
            BackendError: naming the service and the percents sent: Cloud Run refused (an
                unknown revision, a sum other than 100) or the service is not there.
        """
        name = service_path(*self._service_where(target or current_target()), service_name)
        context = f"setting the traffic of {service_name} to {format_percents(percents)}"
        current = self._existing(name, context)
        now = traffic_of(current)
        wanted = {r.rsplit("/", 1)[-1]: p for r, p in percents.items() if p}
        if now.percents == wanted:
            return now
        return traffic_of(self._send(current, traffic_targets(percents, now.tags), context))

    def untag(self, service_name: str, tag: str, *, target: Target | None = None) -> None:
        """Drop `tag`'s target (and its URL); a tag or service that is not there is fine.

        Raises:
            BackendError: Cloud Run refused or did not answer.
        """
        name = service_path(*self._service_where(target or current_target()), service_name)
        context = f"removing the tag {tag} of {service_name}"
        current = self._run.get(name, context)
        if current is None or tag not in traffic_of(current).tags:
            return
        now = traffic_of(current)
        tags = {other: serving for other, serving in now.tags.items() if other != tag}
        self._send(current, traffic_targets(now.percents, tags), context)

    # -- shared with deploy_service ------------------------------------------------------

    def _prepare(
        self,
        service_name: str,
        service_account_email: str,
        spec: DeploymentSpec,
        target: Target,
        context: str,
    ) -> tuple[str, Any]:
        """(full service name, `run_v2.Service` to send) for deploying `spec`; grants the
        revision's account the calls it makes first (its startup probe may need them)."""
        project, region = self._where(spec, target)
        try:
            check_service_id(service_name)
        except ValueError as exc:
            raise BackendError(f"{context}: {exc}") from None
        if not spec.image:
            raise BackendError(f"{context}: the spec has no image (build it first)")
        account = full_account_email(service_account_email or self.default_service_account, project)
        # The worker compares with the fingerprint of what it was given: the account as named.
        fingerprint = config_fingerprint(service_account_email, spec, target.health_check)
        resource = service_resource(
            spec, service_account=account, target=target, fingerprint=fingerprint
        )
        name = service_path(project, region, service_name)
        if account:
            parent = name.rpartition("/services/")[0]
            member = f"serviceAccount:{account}"
            self._grants.grant_calls(parent, spec.environment_vars, member, context)
        else:
            log.warning("%s: no service account (set ARCHDEPLOY_DEFAULT_SERVICE_ACCOUNT)", context)
        return name, resource

    def _existing(self, name: str, context: str) -> Any:
        service = self._run.get(name, context)
        if service is None:
            raise BackendError(f"{context}: the service {name} does not exist")
        return service

    def _send(self, current: Any, targets: list[Any], context: str) -> Any:
        """`current` back with `targets` as its traffic (template unchanged: no revision)."""
        updated = type(current)(current)
        updated.traffic = targets
        updated.annotations.pop(CREATED_BY_STAGE, None)
        updated.etag = ""  # the last word wins, as with a rollback
        return self._run.update(updated, context)

    def _where(self, spec: DeploymentSpec, target: Target) -> tuple[str, str]:
        project = target.project_id or self.project_id
        return project, spec.region or target.region or self.region

    def _service_where(self, target: Target) -> tuple[str, str]:
        # No spec here: a task's target carries the spec's region already.
        return target.project_id or self.project_id, target.region or self.region
