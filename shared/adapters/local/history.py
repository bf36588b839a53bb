"""Saved deployments of local services: what `LocalDeployer.rollback` starts again.

Every healthy deploy saves `<state_dir>/run/<service>/history/<revision>.json`: the image,
the spec (environment included), the service account, the health check path and the
config fingerprint; the last `KEEP` are kept. A revision is named after its config
fingerprint (`<service>-<fingerprint[:12]>`), so deploying the same configuration again
names the same revision, as a duplicate delivery must, and a revision is everything
needed to start that deployment again.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from shared.adapters.local.processes import write_json_atomic
from shared.errors import BackendError

Record = dict[str, Any]

KEEP = 3  # saved deployments per service, as rollback targets
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,80}")


def revision_id(service: str, fingerprint: str) -> str:
    return f"{service}-{fingerprint[:12]}"


class DeploymentHistory:
    """The saved deployments under `run_dir/<service>/history/`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    # `service` is the service's key in the state folder (`project/environment/name`).

    def save(self, service: str, saved: Record) -> None:
        """Save (or refresh) the deployment `saved["revision"]` of `service`."""
        path = self._path(service, str(saved["revision"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, saved)
        # Only the last KEEP deployments are kept (configs naming images, not processes).
        older = sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)[:-KEEP]
        for stale in older:
            if stale != path:
                stale.unlink(missing_ok=True)

    def load(self, service: str, revision: str, context: str) -> Record:
        """The saved deployment `revision` of `service`.

        Raises:
            BackendError: there is none (naming the service, the revision and the ones
                that are saved), or it cannot be read.
        """
        if not _REVISION.fullmatch(revision):
            raise BackendError(f"{context}: {revision!r} is not a local revision id")
        path = self._path(service, revision)
        try:
            saved: Record = json.loads(path.read_text())
        except FileNotFoundError:
            known = ", ".join(self.revisions(service)) or "none"
            raise BackendError(
                f"{context}: {Path(service).name} has no saved deployment {revision!r} in "
                f"{path.parent} (saved: {known})"
            ) from None
        except (OSError, ValueError) as exc:
            raise BackendError(f"{context}: cannot read {path}: {exc}") from exc
        return saved

    def revisions(self, service: str) -> list[str]:
        return sorted(p.stem for p in (self.run_dir / service / "history").glob("*.json"))

    def forget(self, service: str) -> None:
        """Delete the service's history (and everything else under its run directory)."""
        shutil.rmtree(self.run_dir / service, ignore_errors=True)

    def _path(self, service: str, revision: str) -> Path:
        return self.run_dir / service / "history" / f"{revision}.json"
