"""Cloud Build's history as `GcpDeployer`'s image cache, keyed by input digest.

`build_input` hashes what a build of a local source reads (the build context after the
ignore files, with the config templates, plus the builder and the image's repository) and
names the image `<repository>:src-<digest12>`. The build carries the tag `ad-src-<hex>`
(`gcp_build.source_tag`); `CloudBuildCache.lookup` asks ListBuilds for the successful
builds so tagged and returns the newest one's image, pinned by digest. No other store:
what Cloud Build remembers is what is cached, and deleting a build's image from Artifact
Registry is undone with `archdeploy up --no-cache`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.adapters.gcp.cloud_build import (
    BUILDPACKS_BUILDER,
    DOCKER_STEP,
    PACK_STEP,
    cached_builds_filter,
    image_name,
    newest_pinned_image,
    source_tag,
)
from shared.adapters.gcp.retry import RetryPolicy
from shared.adapters.gcp.source_archive import build_context, source_entries
from shared.adapters.input_digest import input_digest
from shared.architecture.model import DeploymentSpec
from shared.errors import BackendError

log = logging.getLogger(__name__)

LOOKUP_LIMIT = 20  # newest successful builds of one input to look at


@dataclass(frozen=True)
class BuildInput:
    digest: str  # see shared.adapters.input_digest
    repository: str  # where the image goes, without tag
    image: str  # the image to push, tagged


def build_input(
    service: str, spec: DeploymentSpec, *, project: str, region: str, default_repo: str
) -> BuildInput | None:
    """The input digest of a local source and the image it is built as; None for gs://.

    Raises:
        OSError, ValueError: the source cannot be read.
    """
    if spec.source_path.startswith("gs://"):
        return None
    entries = source_entries(
        spec.source_path, spec.config_templates, build_dir=spec.buildable_module_path
    )
    files = build_context(entries, spec.buildable_module_path)
    repository = spec.image or image_name(
        region=region, project=project, repo=spec.image_repo or default_repo, service=service
    )
    builder = (
        f"docker {DOCKER_STEP}"
        if "Dockerfile" in files
        else f"pack {PACK_STEP} --builder {BUILDPACKS_BUILDER}"
    )
    digest = input_digest(files, builder=f"{builder} -> {repository}", links=True)
    return BuildInput(digest, repository, spec.image or f"{repository}:src-{digest[:12]}")


class CloudBuildCache:
    """Finds the image of an earlier successful build of the same input."""

    def __init__(
        self, client: Callable[[], Any], retry: RetryPolicy, *, rpc_timeout: float = 60.0
    ) -> None:
        self._client = client
        self._retry = retry
        self._rpc_timeout = rpc_timeout

    def lookup(self, inputs: BuildInput, *, project: str, region: str, context: str) -> str | None:
        """The newest such build's image, pinned; None when there is none or Cloud Build
        does not answer (logged: a miss only costs a build)."""
        from google.cloud.devtools import cloudbuild_v1

        request = cloudbuild_v1.ListBuildsRequest(
            parent=f"projects/{project}/locations/{region}",
            project_id=project,
            filter=cached_builds_filter(source_tag(inputs.digest)),
            page_size=LOOKUP_LIMIT,
        )
        client = self._client()

        def newest_builds() -> list[Any]:
            pager = client.list_builds(request=request, retry=None, timeout=self._rpc_timeout)
            return list(itertools.islice(pager, LOOKUP_LIMIT))  # the first page only

        try:
            builds = self._retry.call(newest_builds, context=context, api_call="ListBuilds")
        except BackendError as exc:
            log.warning("%s; building instead", exc)
            return None
        image = newest_pinned_image(builds, inputs.repository)
        if image is not None:
            log.info("%s: input %s built before: reusing %s", context, inputs.digest[:12], image)
        return image
