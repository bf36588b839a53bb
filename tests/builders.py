"""Small architectures for tests, built from plain dicts."""

from __future__ import annotations

from typing import Any

from shared.architecture.model import Architecture


def service(name: str, *deps: str, **deployment: Any) -> dict[str, Any]:
    return {
        "name": name,
        "service_account": f"{name}-sa",
        "dependencies": list(deps),
        "deployment": {"source_path": f"services/{name}", "image_repo": "repo", **deployment},
    }


def architecture(
    dataflows: dict[str, list[dict[str, Any]]] | None = None,
    *,
    director: bool = True,
    **root: Any,
) -> Architecture:
    doc: dict[str, Any] = {"project_id": "acme-dev", "region": "europe-west1", **root}
    if director:
        doc["service_manager_spec"] = service("director")
    flows = (
        dataflows
        if dataflows is not None
        else {
            "orders": [service("ingest", "director"), service("enrich", "ingest")],
            "notifications": [service("notify")],
        }
    )
    doc["dataflows"] = {
        flow: {"services": {s["name"]: s for s in services}} for flow, services in flows.items()
    }
    return Architecture.model_validate(doc)


def wide(count: int, *, director: bool = False) -> Architecture:
    """`count` independent services in one dataflow."""
    return architecture(
        {"wide": [service(f"svc-{i:04d}") for i in range(count)]}, director=director
    )
