"""Architectures kept in Cloud Storage: `gs://BUCKET/OBJECT`.

`google-cloud-storage` is imported on first use, so a function that never reads one
does not load it. With `STORAGE_EMULATOR_HOST` set, the client talks to that server.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from shared.adapters.gcp.retry import is_transient
from shared.architecture.loading import (
    MAX_ARCHITECTURE_BYTES,
    LoadedArchitecture,
    parse_architecture,
)
from shared.errors import ArchdeployError, ArchitectureError, BackendError, Problem

PREFIX = "gs://"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_URI_FIX = "write gs://BUCKET/path/to/architecture.yaml"
_TIMEOUT = 30.0


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """(bucket, object name); raises `ValueError` saying what is wrong."""
    bucket, _, name = uri.removeprefix(PREFIX).partition("/")
    if not uri.startswith(PREFIX) or not _BUCKET.fullmatch(bucket) or not name.strip("/"):
        raise ValueError(f"{uri!r} does not name an object as gs://BUCKET/OBJECT")
    return bucket, name


class GcsArchitectures:
    """The `ArchitectureReader` for `gs://` URIs.

    A missing object or a refused permission becomes an `ArchitectureError` (the run is
    recorded as failed, with the fix); a transient failure a retryable `BackendError`.
    """

    def __init__(self, project: str = "", *, client: Any = None) -> None:
        self.project = project
        self._client = client
        self._lock = threading.Lock()

    def read(self, uri: str) -> LoadedArchitecture:
        try:
            bucket, name = parse_gs_uri(uri)
        except ValueError as exc:
            raise ArchitectureError([Problem("", str(exc), None, _URI_FIX, uri)]) from None
        return parse_architecture(self._download(bucket, name, uri), file=uri)

    def _download(self, bucket: str, name: str, uri: str) -> bytes:
        from google.api_core import exceptions

        blob = self.client().bucket(bucket).blob(name)
        try:
            blob.reload(timeout=_TIMEOUT)
            if (blob.size or 0) > MAX_ARCHITECTURE_BYTES:
                message = f"the object is {blob.size} bytes, over the 1 MiB architecture limit"
                fix = "architecture files are a few kilobytes: check that this is the right object"
                raise ArchitectureError([Problem("", message, None, fix, uri)])
            data: bytes = blob.download_as_bytes(timeout=_TIMEOUT)
            return data
        except exceptions.GoogleAPICallError as exc:
            raise _translated(exc, uri) from None
        except (exceptions.RetryError, OSError) as exc:  # requests' errors are OSErrors
            raise BackendError(f"reading {uri}: {exc}", retryable=is_transient(exc)) from None

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import google.cloud.storage as storage

                self._client = storage.Client(project=self.project or None)
            return self._client


def _translated(exc: Any, uri: str) -> ArchdeployError:
    code = int(exc.code or 0)
    if is_transient(exc):
        return BackendError(f"reading {uri}: Cloud Storage answered {code}", retryable=True)
    fixes = {
        404: "check the bucket and object name, and that the object was uploaded",
        403: "grant the dispatcher's service account roles/storage.objectViewer on the bucket",
        401: "the dispatcher has no valid credentials for Cloud Storage",
    }
    message = f"cannot read the architecture file: Cloud Storage answered {code}"
    fix = fixes.get(code, "check the URI and the bucket's permissions")
    return ArchitectureError([Problem("", message, None, fix, uri)])
