"""The Go seed's `DeploymentManager`, kept for library users and tests.

A facade over the event-driven core on the in-process bus, not a second orchestration:
each call is one run through the same dispatcher, workers and aggregator.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from shared.architecture.model import Architecture
from shared.bootstrap import Embedded, embedded, memory_store
from shared.deployer import ContainerDeployer
from shared.errors import DeploymentError, ServiceFailure
from shared.messages import DeployRequest, RunResult, RunStatus
from shared.ports import RunStore
from shared.settings import Settings


class DeploymentManager:
    """Builds and deploys an architecture's services in parallel, aggregating every error."""

    def __init__(
        self,
        architecture: Architecture,
        deployer: ContainerDeployer,
        *,
        source_root: Path | str = ".",
        parallelism: int = 32,
        store: RunStore | None = None,
    ) -> None:
        self.architecture = architecture
        self.deployer = deployer
        self.source_root = str(Path(source_root).resolve())
        self._settings = Settings(parallelism=parallelism, state_dir=Path(".archdeploy"))
        self._store = store
        self.last_result: RunResult | None = None

    def build_all_services(self) -> dict[str, str]:
        """Build every service with a deployment spec, across all dataflows, in parallel.

        Returns service -> image URI. Raises `DeploymentError` listing every failed build
        (its `images` still holds the builds that succeeded).
        """
        result = self._run(
            DeployRequest(
                architecture=self._document(), build_only=True, source_root=self.source_root
            )
        )
        return dict(result.images)

    def deploy_application_services(
        self,
        dataflow_name: str,
        service_account_emails: Mapping[str, str],
        built_images: Mapping[str, str],
        director_url: str,
    ) -> dict[str, str]:
        """Deploy one dataflow's services in parallel, env enriched, after their dependencies.

        Services missing from `built_images` are built first. Returns service -> URL.
        Raises `DeploymentError` listing every failure (its `urls` holds what deployed).
        """
        flow = self.architecture.dataflows.get(dataflow_name)
        members = {s.name for s in flow.services.values()} if flow else set()
        request = DeployRequest(
            architecture=self._document(),
            source_root=self.source_root,
            dataflows=[dataflow_name],
            director_url=director_url or None,
            images={k: v for k, v in built_images.items() if k in members},
            service_accounts=dict(service_account_emails),
        )
        result = self._run(request)
        return {name: url for name, url in result.urls.items() if name in members}

    def _document(self) -> str:
        return self.architecture.model_dump_json(exclude_defaults=True)

    def _run(self, request: DeployRequest) -> RunResult:
        # Without a store of the caller's, each call keeps its run in memory only.
        store = self._store or memory_store()
        system: Embedded = embedded(self._settings, deployer=self.deployer, store=store)
        try:
            run = system.submit(request)
            result = system.wait(run.run_id)
        finally:
            if self._store is None:
                system.close()  # the bus and the store this call made
            else:
                system.bus.close()
        self.last_result = result
        if result.status is not RunStatus.SUCCEEDED:
            failures = [ServiceFailure(e.service, e.phase.value, e.error) for e in result.errors]
            if result.error:
                failures.append(ServiceFailure("(run)", "dispatch", result.error))
            raise DeploymentError(failures, images=result.images, urls=result.urls, result=result)
        return result
