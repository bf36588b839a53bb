"""Revisions, tags and traffic of local services: `LocalDeployer`'s `TrafficDeployer` half.

A service's traffic, `<state_dir>/run/<key>/traffic.json`, names the revisions alive for
it (each one process, its record as `instances` writes it), the percent of the stable
URL's requests each gets and the tags pointing at them. Every change happens under the
service's lock: the new routes go to the front end (`gateway.serve`), which returns once
requests to revisions no longer routed have drained; only then are revisions left with
neither traffic nor a tag stopped. `run/<key>.json` stays the record of the revision
with the largest share, what `deployed`, `running` and `rollback` look at.

A tag's URL is a second loopback port of the front end (`ports.json` key `<key>#<tag>`),
served by the same process, reaching that revision only; removing the tag frees it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.adapters.local.gateway import TAG_SEPARATOR, Gateway
from shared.adapters.local.history import DeploymentHistory
from shared.adapters.local.instances import Instances, alive, read_json
from shared.adapters.local.processes import write_json_atomic
from shared.architecture.model import DeploymentSpec
from shared.deployer import Staged, Target, Traffic, current_target
from shared.errors import BackendError

Record = dict[str, Any]

TAG = re.compile(r"[a-z][a-z0-9-]{0,45}")  # Cloud Run's tag rule: a DNS label prefix


@dataclass
class TrafficState:
    """What serves one service: live revisions, their percents, its tags."""

    records: dict[str, Record] = field(default_factory=dict)  # revision -> its process
    percents: dict[str, int] = field(default_factory=dict)  # revision -> percent (> 0)
    tags: dict[str, str] = field(default_factory=dict)  # tag -> revision
    created: str = ""  # a stage that created the service: its revision

    @classmethod
    def load(cls, instances: Instances, key: str) -> TrafficState:
        document = read_json(_path(instances, key))
        if document is not None:
            return cls(
                records=dict(document.get("records", {})),
                percents={str(r): int(p) for r, p in document.get("percents", {}).items()},
                tags=dict(document.get("tags", {})),
                created=str(document.get("created", "")),
            )
        record = instances.read(key)  # a service deployed before traffic was recorded
        if record is None or "fingerprint" not in record:
            return cls()
        revision = str(record["revision"])
        return cls(records={revision: record}, percents={revision: 100})

    def save(self, instances: Instances, key: str) -> None:
        document = {
            "records": self.records,
            "percents": self.percents,
            "tags": self.tags,
            "created": self.created,
        }
        write_json_atomic(_path(instances, key), document)

    def serve(self, record: Record) -> None:
        """`record`'s revision takes all traffic (an ordinary deploy); tags are kept."""
        self.records[str(record["revision"])] = record
        self.percents = {str(record["revision"]): 100}

    def stage(self, record: Record, tag: str) -> None:
        """`record`'s revision gets `tag` and no traffic, unless nothing serves yet."""
        revision = str(record["revision"])
        self.records[revision] = record
        self.tags[tag] = revision
        if not self.percents:
            self.percents = {revision: 100}
            self.created = revision

    def split(self, service: str, percents: dict[str, int]) -> None:
        """Refuses (BackendError) a percent out of 0..100, an unknown or stopped revision,
        or a sum other than 100."""
        context = f"setting the traffic of {service}"
        known = ", ".join(sorted(self.records)) or "none"
        for revision, percent in percents.items():
            if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
                raise BackendError(f"{context}: {revision} gets {percent!r}: give 0 to 100")
            if revision not in self.records:
                raise BackendError(f"{context}: no revision {revision!r} (revisions: {known})")
            if percent and not alive(self.records[revision]):
                raise BackendError(f"{context}: revision {revision} is not running: stage it again")
        total = sum(percents.values())
        if total != 100:
            raise BackendError(f"{context}: the percents sum to {total}: they must sum to 100")
        self.percents = {r: p for r, p in percents.items() if p > 0}

    def prune(self) -> None:
        """Forget revisions with neither traffic nor a tag (the caller stops them)."""
        kept = set(self.percents) | set(self.tags.values())
        self.records = {r: rec for r, rec in self.records.items() if r in kept}

    def primary(self) -> Record:
        revision = max(self.percents, key=lambda r: (self.percents[r], r))
        return self.records[revision]

    def routes(self, port: int, tag_ports: dict[str, int]) -> dict[int, Record]:
        """The front end's routes: the stable port split by percent, each tag's its own."""
        routes = {
            port: {
                "tag": "",
                "backends": [
                    _backend(self.records[r], p) for r, p in sorted(self.percents.items())
                ],
            }
        }
        for tag, revision in sorted(self.tags.items()):
            routes[tag_ports[tag]] = {
                "tag": tag,
                "backends": [_backend(self.records[revision], 100)],
            }
        return routes


def _backend(record: Record, percent: int) -> Record:
    return {"revision": record["revision"], "upstream": record["revision_url"], "percent": percent}


def _path(instances: Instances, key: str) -> Path:
    return instances.run_dir / key / "traffic.json"


def check_tag(service: str, tag: str) -> None:
    if not TAG.fullmatch(tag):
        raise BackendError(
            f"tagging {service}: {tag!r} is not a tag: use lowercase letters, digits and '-',"
            " starting with a letter (at most 46)"
        )


class TrafficMixin:
    """`stage`, `traffic`, `set_traffic` and `untag` over `LocalDeployer`'s parts."""

    instances: Instances
    gateway: Gateway
    history: DeploymentHistory

    def stage(
        self,
        service_name: str,
        service_account_email: str,
        spec: DeploymentSpec,
        *,
        tag: str,
        target: Target | None = None,
    ) -> Staged:
        """Start `spec` as a revision tagged `tag`, healthy, with no traffic (all of it if
        the service did not exist: `Staged.created`). A live revision of the same
        configuration is tagged instead, with no new process. Raises BackendError."""
        check_tag(service_name, tag)
        target = target or current_target()
        saved = self._saved(service_name, service_account_email, spec, target)
        key = self._key(service_name, target)
        revision = str(saved["revision"])
        live = TrafficState.load(self.instances, key).records.get(revision)
        if live is not None and alive(live):
            state = self.commit_traffic(key, service_name, lambda s: s.tags.update({tag: revision}))
        else:
            record = self._start_revision(service_name, spec, saved, key, f"staging {service_name}")
            state = self.commit_traffic(
                key, service_name, lambda s: s.stage(record, tag), new=[record]
            )
            self.history.save(key, saved)
        url = self.gateway.url(self.gateway.tag_ports(key)[tag])
        return Staged(revision=revision, tag=tag, url=url, created=state.created == revision)

    def traffic(self, service_name: str, *, target: Target | None = None) -> Traffic | None:
        """The service's revisions by percent and its tags with their URLs, or None."""
        return self.traffic_at(self._key(service_name, target))

    def traffic_at(self, key: str) -> Traffic | None:
        state = TrafficState.load(self.instances, key)
        port = self.gateway.known_port(key)
        if not state.percents or port is None:
            return None
        tag_ports = self.gateway.tag_ports(key)
        return Traffic(
            url=self.gateway.url(port),
            percents=dict(state.percents),
            tags=dict(state.tags),
            tag_urls={t: self.gateway.url(tag_ports[t]) for t in state.tags if t in tag_ports},
        )

    def set_traffic(
        self, service_name: str, percents: dict[str, int], *, target: Target | None = None
    ) -> Traffic:
        """Split the stable URL's requests by `percents`; revisions left with neither
        traffic nor a tag are stopped once drained. Raises BackendError naming what it
        refuses (a sum other than 100, an unknown revision, a percent out of 0..100)."""
        key = self._key(service_name, target)
        state = TrafficState.load(self.instances, key)
        if not state.percents:
            raise BackendError(f"setting the traffic of {service_name}: it is not deployed")
        started = self._wake(service_name, key, state, percents)

        def change(s: TrafficState) -> None:
            s.records.update({str(r["revision"]): r for r in started})
            s.split(service_name, percents)

        self.commit_traffic(key, service_name, change, new=started)
        traffic = self.traffic_at(key)
        assert traffic is not None
        return traffic

    def _wake(
        self, service_name: str, key: str, state: TrafficState, percents: dict[str, int]
    ) -> list[Record]:
        """Start again each revision given traffic whose process is gone but whose
        deployment is saved, as a Cloud Run revision that served before scales up from
        zero: what a rollback to a release's previous revision needs."""
        saved = set(self.history.revisions(key))
        started: list[Record] = []
        try:
            for revision, percent in sorted(percents.items()):
                record = state.records.get(revision)
                if percent <= 0 or (record is not None and alive(record)) or revision not in saved:
                    continue
                context = f"setting the traffic of {service_name}: starting {revision} again"
                deployment = self.history.load(key, revision, context)
                spec = DeploymentSpec.model_validate(deployment["spec"])
                started.append(self._start_revision(service_name, spec, deployment, key, context))
        except BaseException:
            for record in started:
                self.instances.stop_instance(record)
                self.instances.forget_starting(key, str(record["instance"]))
            raise
        return started

    def untag(self, service_name: str, tag: str, *, target: Target | None = None) -> None:
        """Remove `tag` and free its port; its revision stops if it has no traffic."""
        key = self._key(service_name, target)
        state = TrafficState.load(self.instances, key)
        if tag in state.tags:
            self.commit_traffic(key, service_name, lambda s: s.tags.pop(tag, None))
        self.gateway.forget_port(f"{key}{TAG_SEPARATOR}{tag}")

    def commit_traffic(
        self,
        key: str,
        service: str,
        change: Callable[[TrafficState], object],
        new: Sequence[Record] = (),
    ) -> TrafficState:
        """Apply `change` under the service's lock, route it, then stop what it left
        unreferenced. `new`, revisions just started, are stopped if this fails."""
        stale: list[Record] = []
        result = TrafficState()

        def apply() -> Record:
            state = TrafficState.load(self.instances, key)
            before = {str(r.get("instance")): r for r in state.records.values()}
            change(state)
            state.prune()
            port = self.gateway.port_for(key, _pinned(state))
            tag_ports = {t: self.gateway.port_for(f"{key}{TAG_SEPARATOR}{t}") for t in state.tags}
            self.gateway.serve(key, service, state.routes(port, tag_ports))
            state.save(self.instances, key)
            for record in new:  # recorded in traffic.json now, no longer "starting"
                self.instances.forget_starting(key, str(record["instance"]))
            after = {str(r.get("instance")) for r in state.records.values()}
            stale.extend(r for i, r in before.items() if i not in after)
            result.__dict__.update(state.__dict__)
            return state.primary()

        try:
            self.instances.commit(key, apply)
        except BaseException:
            for record in new:
                self.instances.stop_instance(record)
                self.instances.forget_starting(key, str(record["instance"]))
            raise
        for record in stale:
            self.instances.stop_instance(record)
        return result

    # Provided by LocalDeployer.
    def _key(self, service_name: str, target: Target | None = None) -> str:
        raise NotImplementedError

    def _saved(
        self, service_name: str, service_account_email: str, spec: DeploymentSpec, target: Target
    ) -> Record:
        raise NotImplementedError

    def _start_revision(
        self, service_name: str, spec: DeploymentSpec, saved: Record, key: str, context: str
    ) -> Record:
        raise NotImplementedError


def _pinned(state: TrafficState) -> int | None:
    port = state.primary().get("pinned_port") if state.percents else None
    return int(port) if port is not None else None


def describe(traffic: Traffic) -> list[str]:
    """One line per revision: its percent and its tags with their URLs (for `status`)."""
    revisions = sorted(set(traffic.percents) | set(traffic.tags.values()))
    lines = []
    for revision in revisions:
        tags = [
            f"tag {t} {traffic.tag_urls.get(t, '')}".rstrip()
            for t, r in sorted(traffic.tags.items())
            if r == revision
        ]
        lines.append(f"{revision:<30} {traffic.percents.get(revision, 0):>3}%  {', '.join(tags)}")
    return [line.rstrip() for line in lines]
