"""Revisions of the fake Cloud Run: what a revision keeps, and the names and URLs Cloud Run
gives services and revisions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from google.cloud import run_v2


@dataclass
class Revision:
    name: str  # full resource name
    template: Any  # run_v2.RevisionTemplate
    ready: bool

    @property
    def id(self) -> str:
        return self.name.rsplit("/", 1)[-1]


def template_changed(old: Any, new: Any) -> bool:
    return bool(run_v2.RevisionTemplate.serialize(old) != run_v2.RevisionTemplate.serialize(new))


def service_url(name: str) -> str:
    """`https://<service>-<hash>-<region code>.a.run.app`, as Cloud Run names URLs."""
    parts = name.split("/")
    project, region, service = parts[1], parts[3], parts[5]
    digest = hashlib.sha256(project.encode()).hexdigest()[:10]
    code = "".join(word[0] for word in region.split("-"))
    return f"https://{service}-{digest}-{code}.a.run.app"


def tag_url(name: str, tag: str) -> str:
    """`https://<tag>---<service>-<hash>-<region code>.a.run.app`: a tag's own URL, as
    run/docs/rollouts-rollbacks-traffic-migration shows it (`https://TAG---SERVICE...`)."""
    return service_url(name).replace("https://", f"https://{tag}---", 1)


def traffic_statuses(name: str, targets: list[Any], latest_ready: str) -> list[Any]:
    """What `traffic` resolves to: LATEST as the latest ready revision (an id), each tag
    with its URL."""
    latest = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
    return [
        run_v2.TrafficTargetStatus(
            type_=t.type_,
            revision=latest_ready if t.type_ == latest else t.revision,
            percent=t.percent,
            tag=t.tag,
            uri=tag_url(name, t.tag) if t.tag else "",
        )
        for t in targets
    ]


def not_ready_message(service: Any) -> str:
    revision = service.latest_created_revision.rsplit("/", 1)[-1]
    return (
        f"Revision '{revision}' is not ready and cannot serve traffic. "
        f"{service.terminal_condition.message}"
    )
