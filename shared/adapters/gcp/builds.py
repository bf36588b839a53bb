"""Reaching a submitted build again: GetBuild and CancelBuild by its full name.

Builds are regional. Only the name projects/P/locations/L/builds/ID routes to region L
(the client sends `x-goog-request-params: location=L` for it); the legacy (project_id, id)
form is served by `global`, where a regional build is NOT_FOUND ("This method only cancels
builds in the "global" region when using the legacy resource path", Cloud Build REST
reference, projects.builds.cancel). A build is waited for with GetBuild rather than through
its long-running operation, whose polling carries no routing header
(googleapis/google-cloud-python#12123).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from shared.adapters.gcp.cloud_build import FAILED_STATUSES, SUCCESS
from shared.adapters.gcp.retry import RetryPolicy

log = logging.getLogger(__name__)

FINISHED = FAILED_STATUSES | {SUCCESS}
_RPC_TIMEOUT = 60.0


class CloudBuilds:
    def __init__(self, client: Callable[[], Any], retry: RetryPolicy, poll_interval: float) -> None:
        self._client = client
        self._retry = retry
        self._poll_interval = poll_interval

    def get(self, name: str, context: str) -> Any:
        from google.cloud.devtools import cloudbuild_v1

        client = self._client()
        request = cloudbuild_v1.GetBuildRequest(name=name)
        return self._retry.call(
            lambda: client.get_build(request=request, retry=None, timeout=_RPC_TIMEOUT),
            context=context,
            api_call="GetBuild",
        )

    def wait(self, name: str, timeout: float, context: str) -> Any:
        """The build `name` once it has finished, or None when `timeout` passed first."""
        from google.cloud.devtools import cloudbuild_v1

        deadline = time.monotonic() + timeout
        delay = self._poll_interval
        while True:
            build = self.get(name, context)
            if cloudbuild_v1.Build.Status(build.status).name in FINISHED:
                return build
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 20 * self._poll_interval)

    def cancel(self, name: str) -> None:
        """Cancel the build `name`; one that has finished already is fine.

        Raises:
            BackendError: Cloud Build refused or did not answer.
        """
        from google.api_core import exceptions as api
        from google.cloud.devtools import cloudbuild_v1

        client = self._client()
        request = cloudbuild_v1.CancelBuildRequest(name=name)
        try:
            self._retry.call(
                lambda: client.cancel_build(request=request, retry=None, timeout=_RPC_TIMEOUT),
                context=f"cancelling build {name}",
                api_call="CancelBuild",
                passthrough=(api.FailedPrecondition,),
            )
        except api.FailedPrecondition:  # finished already: nothing left to cancel
            log.info("build %s has finished already", name)
