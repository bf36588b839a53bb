"""Cloud Run traffic as a `TrafficDeployer` sees it: revisions named for what they run,
traffic pinned to revisions, tags as 0% targets.

Nothing here calls Cloud Run: these build the `run_v2.TrafficTarget` lists that
`releases.CloudRunReleases` sends and read `Traffic` back from a `run_v2.Service`.
Traffic is always pinned (TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION): a LATEST target would
move to every new revision as soon as it is ready, which is what staging must not do.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from shared.adapters.gcp.cloud_run import revision_id
from shared.deployer import Traffic

_TAG = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def tag_problem(tag: str) -> str | None:
    """Why `tag` cannot be a Cloud Run traffic tag (it starts a DNS label), or None."""
    if _TAG.fullmatch(tag):
        return None
    return (
        f"{tag!r} is not a valid tag: use lowercase letters, digits and hyphens, starting "
        "with a letter and not ending with a hyphen"
    )


def revision_name(service_id: str, tag: str, template: Any) -> str:
    """`<service>-<tag>-<8 hex>`, the hex a digest of the revision template (which carries
    the config fingerprint). Cloud Run requires the `<service>-` prefix; the same template
    staged again under the same tag names the same revision, which Cloud Run takes as
    that revision again rather than a new one."""
    from google.cloud import run_v2

    fields = run_v2.RevisionTemplate.to_dict(template)
    fields.pop("revision", None)
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return f"{service_id}-{tag}-{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


def traffic_of(service: Any) -> Traffic:
    """The service's traffic as Cloud Run reports it (`traffic_statuses`): percents summed
    per concrete revision (a LATEST target is the latest ready revision), tags and URLs."""
    from google.cloud import run_v2

    latest_type = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
    latest = revision_id(service.latest_ready_revision)
    percents: dict[str, int] = {}
    tags: dict[str, str] = {}
    tag_urls: dict[str, str] = {}
    for status in service.traffic_statuses:
        revision = latest if status.type_ == latest_type else revision_id(status.revision)
        if status.percent:
            percents[revision] = percents.get(revision, 0) + status.percent
        if status.tag:
            tags[status.tag] = revision
            tag_urls[status.tag] = status.uri
    return Traffic(url=service.uri, percents=percents, tags=tags, tag_urls=tag_urls)


def traffic_targets(percents: dict[str, int], tags: dict[str, str]) -> list[Any]:
    """REVISION targets: one per revision with its percent, then one 0% target per tag."""
    from google.cloud import run_v2

    by_revision = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
    targets = [
        run_v2.TrafficTarget(type_=by_revision, revision=revision_id(revision), percent=percent)
        for revision, percent in sorted(percents.items())
    ]
    targets += [
        run_v2.TrafficTarget(type_=by_revision, revision=revision_id(revision), percent=0, tag=tag)
        for tag, revision in sorted(tags.items())
    ]
    return targets


def staged_targets(service: Any, revision: str, tag: str) -> list[Any]:
    """What serves now, pinned with its percents unchanged, every tag kept, and `tag` on
    `revision` (moved there if it pointed elsewhere)."""
    now = traffic_of(service)
    tags = {name: serving for name, serving in now.tags.items() if name != tag}
    tags[tag] = revision
    return traffic_targets(now.percents, tags)


def format_percents(percents: dict[str, int]) -> str:
    """`svc-a 10%, svc-b 90%`: what a traffic change sent, for its messages."""
    return ", ".join(f"{revision_id(r)} {p}%" for r, p in sorted(percents.items())) or "nothing"
