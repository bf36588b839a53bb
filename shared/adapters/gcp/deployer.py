"""`GcpDeployer`: images built by Cloud Build, services run on Cloud Run.

Sources are packed deterministically (`source_archive`) and staged content-addressed in
`gs://<source_bucket>/sources/<service>/<sha256>.tar.gz`, so an unchanged tree is uploaded
once. A tree with a Dockerfile (in `buildable_module_path` when set) is built with docker,
anything else with Cloud Native Buildpacks; Cloud Build pushes the image to Artifact
Registry and `build` returns it pinned by digest.

Builds can outlast a function's 540 s limit, so a worker uses `submit_build` (returns the
build's full regional name at once) and learns the outcome from the `cloud-builds` topic through
`gcp_build.parse_build_notification`. `build` waits, for the CLI and local facades.

Repeated runs skip unchanged work (`IncrementalDeployer`) with no store of its own: a
build is tagged with its input digest and `cached_image` asks Cloud Build's history for
the newest successful build so tagged (`gcp_build`); a deploy annotates the service with
its config fingerprint, which `deployed` reads back with the serving revision; `rollback`
pins all traffic to an earlier revision by a REVISION target, keeping tags (`gcp_run`).
Revisions, tags and traffic (`TrafficDeployer`: stage, traffic, set_traffic, untag) are
in `releases`.

Every SDK is imported inside the methods: constructing a `GcpDeployer` loads nothing.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from shared.adapters.gcp.build_cache import CloudBuildCache, build_input
from shared.adapters.gcp.builds import CloudBuilds
from shared.adapters.gcp.cloud_build import (
    BuildNotification,
    account_resource,
    build_name,
    build_resource,
    build_tags,
    failure_text,
    image_uri,
    parse_build_notification,
    pin_image,
    source_tag,
    task_id_from_build,
    task_parts,
)
from shared.adapters.gcp.cloud_run import CloudRunServices, service_path
from shared.adapters.gcp.cloud_run import service_account_email as full_account_email
from shared.adapters.gcp.releases import CloudRunReleases
from shared.adapters.gcp.retry import RetryPolicy
from shared.adapters.gcp.run_iam import PUBLIC, InvokerGrants
from shared.adapters.gcp.source_archive import SourceStager, normalize_dir
from shared.architecture.model import DeploymentSpec
from shared.deployer import Deployed, Target, build_then_deploy, current_target
from shared.errors import BackendError

__all__ = ["BuildNotification", "GcpDeployer", "parse_build_notification", "task_id_from_build"]

log = logging.getLogger(__name__)

_RPC_TIMEOUT = 60.0  # seconds, for each single API call


class GcpDeployer(CloudRunReleases):
    """The `ContainerDeployer` for Google Cloud, also a `TrafficDeployer` (`releases`).
    Thread-safe: builds may run in parallel."""

    def __init__(
        self,
        project_id: str,
        region: str,
        *,
        source_bucket: str,
        image_repo: str = "archdeploy",
        build_client: Any = None,
        run_client: Any = None,
        storage_client: Any = None,
        build_timeout: float = 1200,
        deploy_timeout: float = 600,
        retry_attempts: int = 5,
        retry_base_delay: float = 0.5,
        poll_interval: float = 1.0,
        default_service_account: str = "",
        build_service_account: str = "",
    ) -> None:
        self.project_id = project_id
        self.region = region
        self.source_bucket = source_bucket.removeprefix("gs://").rstrip("/")
        self.image_repo = image_repo
        # A service without `service_account` runs as this one (terraform's runtime account,
        # ARCHDEPLOY_DEFAULT_SERVICE_ACCOUNT) rather than as the Compute Engine default
        # account, which the worker may not act as.
        self.default_service_account = default_service_account
        self.build_service_account = build_service_account  # empty: Cloud Build's default
        self.build_timeout = build_timeout
        self.deploy_timeout = deploy_timeout
        self._retry = RetryPolicy(attempts=retry_attempts, base_delay=retry_base_delay)
        self._poll_interval = poll_interval
        self._clients: dict[str, Any] = {
            "build": build_client,
            "run": run_client,
            "storage": storage_client,
        }
        self._owned: set[str] = set()
        self._lock = threading.Lock()
        self._sources = SourceStager(
            lambda: self._client("storage"), self.source_bucket, self._retry, region=region
        )
        self._cache = CloudBuildCache(lambda: self._client("build"), self._retry)
        self._run = CloudRunServices(
            lambda: self._client("run"),
            self._retry,
            timeout=deploy_timeout,
            poll_interval=poll_interval,
        )
        self._grants = InvokerGrants(lambda: self._client("run"), self._retry)
        self._builds = CloudBuilds(lambda: self._client("build"), self._retry, poll_interval)

    # -- building -----------------------------------------------------------------------

    def build(
        self, service_name: str, spec: DeploymentSpec, *, target: Target | None = None
    ) -> str:
        """Build and push the image, wait for it, return it pinned by digest.

        Raises:
            BackendError: the source cannot be staged, an API call failed, or the build
                ended other than SUCCESS (naming its id, status, detail and log URL).
        """
        target = target or current_target()
        context = f"building {service_name}"
        operation = self._create_build(service_name, spec, target, context)
        return self._await_build(operation, context)

    def submit_build(self, service_name: str, spec: DeploymentSpec, *, target: Target) -> str:
        """Start the build and return its full name (projects/P/locations/L/builds/ID)
        without waiting for it to finish: builds are regional, and only the full name
        reaches a regional build again (`cancel_build`).

        Its outcome arrives on the `cloud-builds` topic; see `parse_build_notification`.
        """
        operation = self._create_build(service_name, spec, target, f"building {service_name}")
        name: str = operation.metadata.build.name
        return name

    def cancel_build(self, build: str) -> None:
        """Cancel a build by its full name (or, as recorded by older versions, its bare id,
        then taken as a build of this deployer's project and region). A build that has
        finished already is fine.

        Raises:
            BackendError: Cloud Build refused or did not answer (NOT_FOUND included: the
                build is not where its name says).
        """
        self._builds.cancel(build_name(build, self.project_id, self.region))

    def _create_build(
        self, service_name: str, spec: DeploymentSpec, target: Target, context: str
    ) -> Any:
        from google.cloud.devtools import cloudbuild_v1

        project, region = self._where(spec, target)
        try:
            build_dir = normalize_dir(spec.buildable_module_path)
            tags = build_tags(
                *task_parts(target.task_id, run_id=target.run_id, service=service_name)
            )
            inputs = build_input(
                service_name, spec, project=project, region=region, default_repo=self.image_repo
            )
        except (OSError, ValueError) as exc:
            raise BackendError(f"{context}: {exc}") from None
        source = self._sources.stage(service_name, spec, context)
        dockerfile = f"{build_dir}/Dockerfile" if build_dir else "Dockerfile"
        if inputs is not None:
            tags.append(source_tag(inputs.digest))
        image = (
            inputs.image
            if inputs
            else self._archive_image(service_name, spec, source.sha256, (project, region))
        )
        build = build_resource(
            image=image,
            bucket=source.bucket,
            object_name=source.object_name,
            dockerfile=dockerfile in source.names,
            build_dir=build_dir,
            tags=tags,
            timeout=self.build_timeout,
            service_account=self._build_account(project),
        )
        request = cloudbuild_v1.CreateBuildRequest(
            parent=f"projects/{project}/locations/{region}", project_id=project, build=build
        )
        client = self._client("build")
        operation = self._retry.call(
            lambda: client.create_build(request=request, retry=None, timeout=_RPC_TIMEOUT),
            context=context,
            api_call="CreateBuild",
        )
        created = operation.metadata.build
        log.info(
            "%s: started build %s of %s (logs: %s)", context, created.id, image, created.log_url
        )
        return operation

    def _archive_image(
        self, service_name: str, spec: DeploymentSpec, sha256: str, where: tuple[str, str]
    ) -> str:
        """A gs:// archive's image, tagged by the archive's bytes."""
        project, region = where
        return spec.image or image_uri(
            region=region,
            project=project,
            repo=spec.image_repo or self.image_repo,
            service=service_name,
            tag=sha256[:12],
        )

    def cached_image(
        self, service_name: str, spec: DeploymentSpec, *, target: Target | None = None
    ) -> str | None:
        """The image of the newest successful build of exactly this input, pinned, or None.

        Asks Cloud Build's history (ListBuilds) for builds tagged with the input digest.
        A `gs://` source is never cached. Never raises: a source it cannot read, or an API
        that does not answer, is a miss (logged), and `build` follows.
        """
        target = target or current_target()
        project, region = self._where(spec, target)
        context = f"looking for a cached image of {service_name}"
        try:
            inputs = build_input(
                service_name, spec, project=project, region=region, default_repo=self.image_repo
            )
        except (OSError, ValueError) as exc:
            log.debug("%s: %s", context, exc)
            return None
        if inputs is None:
            return None
        return self._cache.lookup(inputs, project=project, region=region, context=context)

    def _await_build(self, operation: Any, context: str) -> str:
        from google.cloud.devtools import cloudbuild_v1

        started = operation.metadata.build
        # Polled with GetBuild by its full name, not through the operation: the operations
        # client sends no location routing header, so a regional build's operation is
        # looked up in global and NOT_FOUND (googleapis/google-cloud-python#12123).
        build = self._builds.wait(started.name, self.build_timeout, context)
        if build is None:
            try:
                self.cancel_build(started.name)
            except BackendError as exc:  # best effort: the timeout is the real error
                log.warning("%s: %s", context, exc)
            raise BackendError(
                f"{context}: build {started.id} did not finish within {self.build_timeout:g}s "
                f"and was cancelled (raise build_timeout); logs: {started.log_url}"
            )
        status = cloudbuild_v1.Build.Status(build.status).name
        images = [image for image in build.results.images if image.digest]
        if status == "SUCCESS" and images:
            return pin_image(images[0].name, images[0].digest)
        detail = build.status_detail or ("" if status != "SUCCESS" else "no image digest reported")
        raise BackendError(f"{context}: {failure_text(build.id, status, detail, build.log_url)}")

    # -- deploying ----------------------------------------------------------------------

    def deploy_service(
        self,
        service_name: str,
        service_account_email: str,
        spec: DeploymentSpec,
        *,
        target: Target | None = None,
    ) -> str:
        """Create or update the Cloud Run service; return its URL once it is Ready.

        Raises:
            BackendError: an API call failed, or the new revision did not become ready
                (with Cloud Run's reason).
        """
        target = target or current_target()
        context = f"deploying {service_name}"
        name, resource = self._prepare(service_name, service_account_email, spec, target, context)
        url = self._run.deploy(name, resource, context)
        if spec.public:
            self._grants.grant(name, PUBLIC, context)
        return url

    def build_and_deploy(
        self,
        service_name: str,
        service_account_email: str,
        spec: DeploymentSpec,
        *,
        target: Target | None = None,
    ) -> str:
        return build_then_deploy(self, service_name, service_account_email, spec, target=target)

    def deployed(self, service_name: str, *, target: Target | None = None) -> Deployed | None:
        """What the Cloud Run service serves (GetService), or None: not there, not Ready,
        or Cloud Run did not answer (logged)."""
        target = target or current_target()
        name = service_path(*self._service_where(target), service_name)
        return self._run.deployed(name, f"looking up {service_name}")

    def rollback(self, service_name: str, revision: str, *, target: Target | None = None) -> str:
        """Send all of the service's traffic to `revision` (a `Deployed.revision`); return
        its URL once the service is Ready.

        Raises:
            BackendError: naming the service and revision: Cloud Run refused (an unknown
                revision, say) or the service did not become ready.
        """
        target = target or current_target()
        name = service_path(*self._service_where(target), service_name)
        context = f"rolling back {service_name} to {revision}"
        return self._run.route_all_traffic(name, revision, context)

    def teardown(self, service_name: str, *, target: Target | None = None) -> None:
        """Delete the Cloud Run service, its revisions and annotations with it; one that is
        not there is fine."""
        target = target or current_target()
        name = service_path(*self._service_where(target), service_name)
        self._run.delete(name, f"tearing down {service_name}")

    # -- plumbing -----------------------------------------------------------------------

    def _build_account(self, project: str) -> str:
        email = full_account_email(self.build_service_account, self.project_id)
        return account_resource(email, project) if email else ""

    def close(self) -> None:
        """Close the clients this deployer created; injected ones belong to the caller."""
        with self._lock:
            owned, self._owned = self._owned, set()
            for kind in owned:
                client, self._clients[kind] = self._clients[kind], None
                closer = getattr(client, "close", None) or client.transport.close
                closer()

    def _client(self, kind: str) -> Any:
        with self._lock:
            if self._clients[kind] is None:
                self._clients[kind] = _new_client(kind, self.project_id)
                self._owned.add(kind)
            return self._clients[kind]


def _new_client(kind: str, project: str) -> Any:
    if kind == "build":
        from google.cloud.devtools import cloudbuild_v1

        return cloudbuild_v1.CloudBuildClient()
    if kind == "run":
        from google.cloud import run_v2

        return run_v2.ServicesClient()
    import google.cloud.storage as storage

    # Honours STORAGE_EMULATOR_HOST (then with anonymous credentials), as tests use.
    return storage.Client(project=project)
