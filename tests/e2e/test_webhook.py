"""The GitHub push webhook under functions-framework, against a fake GitHub API.

A signed push queues one DeployRequest and answers at once; the dispatcher (the requests
topic of the function's in-process bus) reads the architecture at the pushed commit;
a worker builds from that commit's tarball. Everything unsigned is refused untouched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import functions_framework
import pytest

from shared import bootstrap
from shared.adapters.github_source import GitHubClient, GitHubSource
from shared.architecture.model import DeploymentSpec
from shared.core.dispatcher import run_id_for
from shared.core.handlers import on_task
from shared.core.runtime import Runtime
from shared.errors import BackendError
from shared.messages import TOPIC_REQUESTS, TOPIC_TASKS, DeployRequest, RunStatus, TaskMessage
from tests.e2e.dispatcher_runtime import fresh_dispatcher_runtime
from tests.fakes import FakeBus, FakeDeployer
from tests.fakes_github import FakeGitHub, entry, fake_github, tarball

__all__ = ["fake_github"]

MAIN = Path(__file__).resolve().parents[2] / "functions" / "dispatcher" / "main.py"
SECRET = "whsec-3f9a0c-do-not-log-me"
REPO = "acme/shop"
SHA = "a" * 40
ARCHITECTURE = """\
project_id: acme-dev
region: europe-west1
dataflows:
  orders:
    services:
      ingest:
        service_account: ingest-sa
        deployment:
          source_path: services/ingest
          config_templates:
            common/registration.py: registration.py
      enrich:
        service_account: enrich-sa
        dependencies: [ingest]
        deployment: {source_path: services/enrich}
"""
TREE = {
    "services.yaml": ARCHITECTURE,
    "services/ingest/main.py": "print('ingest')\n",
    "services/enrich/main.py": "print('enrich')\n",
    "common/registration.py": "REGISTERED = True\n",
}


@pytest.fixture
def rt(tmp_path: Path, fake_github: FakeGitHub, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    fake_github.commit(REPO, SHA, TREE)
    env = {
        "STATE_DIR": str(tmp_path / "state"),
        "WEBHOOK_SECRET": SECRET,
        "GITHUB_TOKEN": fake_github.token,
        "GITHUB_API_URL": fake_github.url,
        "WEBHOOK_BRANCHES": '["main", "release/*"]',
    }
    for name, value in env.items():
        monkeypatch.setenv(f"ARCHDEPLOY_{name}", value)
    yield from fresh_dispatcher_runtime()


@pytest.fixture
def client(rt: Runtime) -> Any:
    return functions_framework.create_app(target="webhook", source=str(MAIN)).test_client()


def push(ref: str = "refs/heads/main", **fields: Any) -> dict[str, Any]:
    payload = {
        "ref": ref,
        "before": "0" * 40,
        "after": SHA,
        "deleted": False,
        "repository": {"full_name": REPO, "private": True},
        "pusher": {"name": "octocat", "email": "octocat@example.com"},
        "commits": [{"id": SHA, "message": "change the architecture"}],
    }
    return payload | fields


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver(
    client: Any,
    payload: Any,
    *,
    event: str = "push",
    delivery: str = "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    signature: str | None = None,
    body: bytes | None = None,
    content_type: str = "application/json",
) -> Any:
    raw = body if body is not None else json.dumps(payload).encode()
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery}
    headers["X-Hub-Signature-256"] = sign(raw) if signature is None else signature
    if not headers["X-Hub-Signature-256"]:
        del headers["X-Hub-Signature-256"]
    return client.post("/", data=raw, headers=headers, content_type=content_type)


def requests_queued(rt: Runtime) -> list[DeployRequest]:
    return [
        DeployRequest.model_validate_json(data)
        for topic, data, _ in rt.bus.published  # type: ignore[attr-defined]
        if topic == TOPIC_REQUESTS
    ]


def task_messages(rt: Runtime) -> list[TaskMessage]:
    published = rt.bus.published  # type: ignore[attr-defined]
    return [TaskMessage.model_validate_json(data) for t, data, _ in published if t == TOPIC_TASKS]


def test_a_signed_push_queues_one_request_and_the_dispatcher_makes_one_run(
    client: Any, rt: Runtime, fake_github: FakeGitHub
) -> None:
    response = deliver(client, push())
    rt.bus.drain(10)  # type: ignore[attr-defined]

    assert response.status_code == 202
    run_id = response.get_json()["run_id"]
    assert run_id == run_id_for(f"github-push:{REPO}:refs/heads/main:{'0' * 40}..{SHA}")
    (queued,) = requests_queued(rt)
    assert queued.architecture_uri == f"github://{REPO}/services.yaml@{SHA}"
    assert queued.source_root == f"github://{REPO}@{SHA}"
    assert queued.supersede_key == f"github:{REPO}:main"
    assert queued.requested_by == "github:octocat"
    run = rt.store.get_run(run_id)
    assert run is not None and run.status is RunStatus.RUNNING and run.error is None
    assert {t.spec.source_path for t in task_messages(rt)} == {
        f"github://{REPO}@{SHA}/services/ingest",
        f"github://{REPO}@{SHA}/services/enrich",
    }
    (read,) = fake_github.seen("/contents/")
    assert read.path == f"/repos/{REPO}/contents/services.yaml" and read.query["ref"] == [SHA]
    assert read.headers["authorization"] == f"Bearer {fake_github.token}"
    assert read.headers["accept"] == "application/vnd.github.raw"


def test_the_same_delivery_again_starts_no_second_run(client: Any, rt: Runtime) -> None:
    first = deliver(client, push())
    rt.bus.drain(10)  # type: ignore[attr-defined]
    again = deliver(client, push())
    rt.bus.drain(10)  # type: ignore[attr-defined]

    assert first.get_json()["run_id"] == again.get_json()["run_id"]
    assert again.status_code == 202 and again.get_json()["duplicate"] is True
    assert len(rt.store.list_runs()) == 1
    assert len(requests_queued(rt)) == 1


def test_a_delivery_redelivered_before_it_was_dispatched_makes_one_run(
    client: Any, rt: Runtime
) -> None:
    answers = [deliver(client, push()) for _ in range(3)]  # no drain in between
    rt.bus.drain(10)  # type: ignore[attr-defined]

    assert len({a.get_json()["run_id"] for a in answers}) == 1
    assert len(rt.store.list_runs()) == 1


def test_the_webhook_answers_without_waiting_for_github(
    client: Any, rt: Runtime, fake_github: FakeGitHub
) -> None:
    fake_github.delay = 1.5  # GitHub is slow today: the answer must not wait for it
    started = time.monotonic()
    response = deliver(client, push())
    answered = time.monotonic() - started
    rt.bus.drain(10)  # type: ignore[attr-defined]

    assert response.status_code == 202 and answered < 1.0
    assert rt.store.get_run(response.get_json()["run_id"]) is not None


@pytest.mark.parametrize(
    ("signature", "body"),
    [
        ("", None),
        (sign(json.dumps(push()).encode(), "another-secret"), None),
        (sign(json.dumps(push()).encode()), json.dumps(push(after="b" * 40)).encode()),
        ("sha256=", None),
        ("sha1=0123456789abcdef", None),
        ("sha256=\u00e9\u00e9", None),
    ],
    ids=["missing", "wrong-secret", "body-altered-after-signing", "empty", "sha1", "non-ascii"],
)
def test_an_untrusted_delivery_is_refused_with_nothing_done(
    client: Any,
    rt: Runtime,
    fake_github: FakeGitHub,
    signature: str,
    body: bytes | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    response = deliver(client, push(), signature=signature, body=body)
    rt.bus.drain(10)  # type: ignore[attr-defined]

    assert response.status_code == 401
    assert "X-Hub-Signature-256" in response.get_json()["error"]
    assert "ARCHDEPLOY_WEBHOOK_SECRET" in response.get_json()["problems"][0]["fix"]
    assert requests_queued(rt) == [] and rt.store.list_runs() == []
    assert fake_github.requests == []
    assert SECRET not in caplog.text and (not signature or signature not in caplog.text)


def test_without_a_configured_secret_every_delivery_is_refused(
    client: Any, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ARCHDEPLOY_WEBHOOK_SECRET")
    bootstrap.function_settings.cache_clear()

    response = deliver(client, push(), signature=sign(b"", ""))

    assert response.status_code == 500
    assert "ARCHDEPLOY_WEBHOOK_SECRET" in response.get_json()["problems"][0]["fix"]
    assert requests_queued(rt) == []


def test_a_ping_is_answered(client: Any, rt: Runtime) -> None:
    response = deliver(client, {"zen": "Keep it logically awesome.", "hook_id": 1}, event="ping")

    assert response.status_code == 200 and response.get_json() == {"pong": True}


@pytest.mark.parametrize(
    ("event", "payload", "reason"),
    [
        ("push", push("refs/heads/feature/x"), "branch feature/x is not deployed"),
        ("push", push(deleted=True, after="0" * 40), "branch main was deleted"),
        ("push", push("refs/tags/v1.0.0"), "tag v1.0.0 pushed"),
        ("push", push("refs/pull/7/head"), "is not a branch"),
        ("issues", {"action": "opened"}, "event `issues` is not handled"),
    ],
    ids=["other-branch", "branch-deleted", "tag", "not-a-branch", "other-event"],
)
def test_a_delivery_that_deploys_nothing_is_ignored_with_its_reason(
    client: Any, rt: Runtime, event: str, payload: dict[str, Any], reason: str
) -> None:
    response = deliver(client, payload, event=event)

    assert response.status_code == 202
    assert response.get_json()["ignored"] is True and reason in response.get_json()["reason"]
    assert requests_queued(rt) == []


def test_a_branch_matching_a_configured_pattern_is_deployed(client: Any, rt: Runtime) -> None:
    response = deliver(client, push("refs/heads/release/2.1"))

    assert response.status_code == 202
    assert requests_queued(rt)[0].supersede_key == f"github:{REPO}:release/2.1"


def test_a_form_encoded_delivery_is_read_like_json(client: Any, rt: Runtime) -> None:
    body = urlencode({"payload": json.dumps(push())}).encode()
    content_type = "application/x-www-form-urlencoded"
    response = deliver(client, None, body=body, content_type=content_type)

    assert response.status_code == 202 and len(requests_queued(rt)) == 1


@pytest.mark.parametrize(
    ("body", "headers", "field"),
    [
        (b"{not json", {}, ""),
        (json.dumps(push() | {"after": None}).encode(), {}, "after"),
        (json.dumps({"ref": "refs/heads/main"}).encode(), {}, "after"),
        (json.dumps(push(after="HEAD~1")).encode(), {}, "after"),
        (json.dumps(push(repository={"full_name": "../../etc"})).encode(), {}, "repository"),
        (json.dumps(push()).encode(), {"delivery": "../../x"}, ""),
    ],
    ids=["not-json", "after-null", "after-missing", "after-not-a-sha", "bad-repo", "bad-delivery"],
)
def test_a_signed_but_malformed_push_is_refused_naming_the_field(
    client: Any, rt: Runtime, body: bytes, headers: dict[str, str], field: str
) -> None:
    response = deliver(client, None, body=body, **headers)

    assert response.status_code == 400
    (problem,) = response.get_json()["problems"]
    assert problem["path"] == field and problem["message"]
    assert requests_queued(rt) == []


def test_an_oversized_delivery_is_refused_before_it_is_checked(client: Any, rt: Runtime) -> None:
    body = b"x" * (25 * 1024 * 1024 + 1)
    response = deliver(client, None, body=body, signature="sha256=unchecked")

    assert response.status_code == 413 and requests_queued(rt) == []


def test_an_architecture_missing_at_the_commit_fails_the_run_with_the_fix(
    client: Any, rt: Runtime, fake_github: FakeGitHub
) -> None:
    fake_github.commit(REPO, SHA, {"README.md": "no architecture here"})

    run_id = deliver(client, push()).get_json()["run_id"]
    rt.bus.drain(10)  # type: ignore[attr-defined]

    run = rt.store.get_run(run_id)
    assert run is not None and run.status is RunStatus.FAILED
    assert "404" in (run.error or "") and "ARCHDEPLOY_WEBHOOK_ARCHITECTURE_PATH" in run.error
    assert task_messages(rt) == []


def test_an_invalid_architecture_at_the_commit_fails_the_run_naming_field_and_line(
    client: Any, rt: Runtime, fake_github: FakeGitHub, caplog: pytest.LogCaptureFixture
) -> None:
    plain = "          environment_vars: {API_TOKEN: tok-plain-value-123}\n"
    leaked = ARCHITECTURE.replace("services/ingest\n", "services/ingest\n" + plain)
    fake_github.commit(REPO, SHA, {**TREE, "services.yaml": leaked})

    run_id = deliver(client, push()).get_json()["run_id"]
    rt.bus.drain(10)  # type: ignore[attr-defined]

    run = rt.store.get_run(run_id)
    assert run is not None and run.status is RunStatus.FAILED
    assert f"github://{REPO}/services.yaml@{SHA}:10" in (run.error or "")
    assert "environment_vars.API_TOKEN" in run.error and "Secret Manager" in run.error
    assert "tok-plain-value-123" not in run.model_dump_json() + caplog.text
    assert rt.store.get_architecture(run_id) in (None, "")
    assert task_messages(rt) == []


def test_a_transient_github_failure_is_retried_until_the_run_is_made(
    client: Any, rt: Runtime, fake_github: FakeGitHub
) -> None:
    fake_github.fail_next = [503, 502]

    run_id = deliver(client, push()).get_json()["run_id"]
    rt.bus.drain(10)  # type: ignore[attr-defined]

    run = rt.store.get_run(run_id)
    assert run is not None and run.status is RunStatus.RUNNING
    assert len(fake_github.seen("/contents/")) == 3


def test_secrets_never_reach_the_logs(
    client: Any,
    rt: Runtime,
    fake_github: FakeGitHub,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    good = deliver(client, push())
    bad = deliver(client, push(), signature=sign(b"tampered"), delivery="d-2")
    rt.bus.drain(10)  # type: ignore[attr-defined]

    assert (good.status_code, bad.status_code) == (202, 401)
    out = capsys.readouterr()
    logged = caplog.text + out.out + out.err
    assert "queued as run" in logged and "refused" in logged
    for secret in (SECRET, fake_github.token, sign(json.dumps(push()).encode())):
        assert secret not in logged
    stored = json.dumps([r.model_dump(mode="json") for r in rt.store.list_runs()])
    assert SECRET not in stored and fake_github.token not in stored


def test_a_bus_outage_answers_503_and_the_redelivery_then_runs(client: Any, rt: Runtime) -> None:
    in_process, failing = rt.bus, FakeBus()
    failing.fail_publish.add(TOPIC_REQUESTS)
    rt.bus = failing

    refused = deliver(client, push())
    rt.bus = in_process
    redelivered = deliver(client, push())  # GitHub's "Redeliver" sends the same delivery id
    rt.bus.drain(10)  # type: ignore[attr-defined]

    assert refused.status_code == 503
    assert "Redeliver" in refused.get_json()["problems"][0]["fix"]
    assert redelivered.status_code == 202
    assert rt.store.get_run(redelivered.get_json()["run_id"]) is not None


# --- build sources at the pushed commit --------------------------------------------------


def test_the_worker_builds_from_the_pushed_commit_downloading_it_once(
    client: Any, rt: Runtime, fake_github: FakeGitHub, tmp_path: Path
) -> None:
    # Given a push dispatched into build tasks
    deliver(client, push())
    rt.bus.drain(10)  # type: ignore[attr-defined]
    # When a worker runs every build task with sources from GitHub
    deployer = FakeDeployer()
    github = GitHubClient(fake_github.url, fake_github.token)
    worker = Runtime(
        store=rt.store, bus=rt.bus, deployer=deployer, sources=GitHubSource(github, tmp_path)
    )
    for message in task_messages(rt):
        on_task(message.model_dump_json().encode(), {}, worker)
    # Then each build saw the commit's files on local disk, fetched in one download
    built = dict(deployer.built)
    ingest, enrich = Path(built["ingest"].source_path), Path(built["enrich"].source_path)
    assert (ingest / "main.py").read_text() == "print('ingest')\n"
    assert (enrich / "main.py").read_text() == "print('enrich')\n"
    ((template, name),) = built["ingest"].config_templates.items()
    assert Path(template).read_text() == "REGISTERED = True\n" and name == "registration.py"
    assert ingest.is_relative_to(tmp_path / "acme" / "shop" / SHA)
    assert len(fake_github.seen("/tarball/")) == 1


def test_the_token_goes_to_the_api_but_not_along_the_tarball_redirect(
    fake_github: FakeGitHub, tmp_path: Path
) -> None:
    fake_github.commit(REPO, SHA, TREE)
    source = GitHubSource(GitHubClient(fake_github.url, fake_github.token), tmp_path)

    source.localize(DeploymentSpec(source_path=f"github://{REPO}@{SHA}/services/ingest"))

    (api,) = fake_github.seen("/tarball/")
    (download,) = fake_github.seen("/_codeload/")
    assert api.headers["authorization"] == f"Bearer {fake_github.token}"
    assert "authorization" not in download.headers


def test_local_and_gs_sources_are_left_as_they_are(fake_github: FakeGitHub, tmp_path: Path) -> None:
    source = GitHubSource(GitHubClient(fake_github.url), tmp_path)
    for spec in (DeploymentSpec(source_path="/src/app"), DeploymentSpec(source_path="gs://b/o")):
        assert source.localize(spec) == spec
    assert fake_github.requests == []


TOP = "acme-shop-aaaaaaa"


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([entry(f"{TOP}/../../evil.py")], "climbs out"),
        ([entry("/etc/cron.d/evil")], "absolute"),
        ([entry(f"{TOP}/link", tarfile.SYMTYPE, link="../../../etc/passwd")], "outside the tree"),
        ([entry(f"{TOP}/link", tarfile.SYMTYPE, link="/etc/passwd")], "outside the tree"),
        ([entry(f"{TOP}/hard", tarfile.LNKTYPE, link=f"{TOP}/../../x")], "outside the tree"),
        ([entry(f"{TOP}/dev", tarfile.CHRTYPE)], "device"),
        ([entry(f"{TOP}/big.bin", size=3000)], "over 2048 bytes"),
        ([entry(f"{TOP}/f{i}") for i in range(40)], "over 32 entries"),
    ],
    ids=[
        "dotdot",
        "absolute",
        "symlink-up",
        "symlink-absolute",
        "hardlink-up",
        "device",
        "size",
        "count",
    ],
)
def test_a_tarball_that_could_escape_or_explode_is_refused_whole(
    fake_github: FakeGitHub, tmp_path: Path, entries: list[tarfile.TarInfo], why: str
) -> None:
    fake_github.tarballs[(REPO, SHA)] = tarball(TOP, {"ok.txt": b"ok"}, extra=entries)
    cache = tmp_path / "cache"
    github = GitHubClient(fake_github.url, fake_github.token)
    source = GitHubSource(github, cache, max_tree=2048, max_members=32)

    with pytest.raises(BackendError, match=why):
        source.localize(DeploymentSpec(source_path=f"github://{REPO}@{SHA}/services"))

    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert written == ["cache", "cache/acme", "cache/acme/shop"]  # nothing extracted, anywhere


@pytest.mark.parametrize(
    "uri",
    [f"github://{REPO}@{SHA}/../../etc", "github://../x@abc/dir", f"github://{REPO}@../x"],
    ids=["dir-up", "owner-dotdot", "ref-dotdot"],
)
def test_a_source_uri_that_leaves_the_repository_is_refused(
    fake_github: FakeGitHub, tmp_path: Path, uri: str
) -> None:
    source = GitHubSource(GitHubClient(fake_github.url), tmp_path)

    with pytest.raises(BackendError, match=r"leaves the repository|does not name|no valid @REF"):
        source.localize(DeploymentSpec(source_path=uri))
    assert fake_github.requests == []


def test_links_that_stay_inside_the_tree_are_kept(fake_github: FakeGitHub, tmp_path: Path) -> None:
    link = entry(f"{TOP}/services/ingest/common", tarfile.SYMTYPE, link="../../common")
    files = {"common/registration.py": b"REGISTERED = True\n", "services/ingest/main.py": b""}
    fake_github.tarballs[(REPO, SHA)] = tarball(TOP, files, extra=[link])
    source = GitHubSource(GitHubClient(fake_github.url, fake_github.token), tmp_path)

    spec = source.localize(DeploymentSpec(source_path=f"github://{REPO}@{SHA}/services/ingest"))

    linked = Path(spec.source_path) / "common" / "registration.py"
    assert linked.read_text() == "REGISTERED = True\n"


def _tree_bytes() -> int:
    return sum(len(body.encode()) for body in TREE.values())


def test_the_tree_cache_keeps_within_its_bound_evicting_the_least_recently_used(
    fake_github: FakeGitHub, tmp_path: Path
) -> None:
    # Given a cache room for two trees, and three commits fetched one after the other
    shas = [c * 40 for c in "abc"]
    for sha in shas:
        fake_github.commit(REPO, sha, TREE)
    source = GitHubSource(
        GitHubClient(fake_github.url, fake_github.token),
        tmp_path,
        max_cache=2 * _tree_bytes(),
        keep_recent=0,
    )
    spec = {sha: DeploymentSpec(source_path=f"github://{REPO}@{sha}/services") for sha in shas}
    source.localize(spec[shas[0]])
    source.localize(spec[shas[1]])
    os.utime(tmp_path / "acme" / "shop" / shas[1], (1, 1))  # b is now the oldest used
    source.localize(spec[shas[0]])  # a is used again
    # When a third tree arrives
    third = Path(source.localize(spec[shas[2]]).source_path)
    # Then the least recently used (b) is gone; a and the new one stay
    kept = sorted(p.name for p in (tmp_path / "acme" / "shop").iterdir())
    assert kept == [shas[0], shas[2]]
    assert (third / "ingest" / "main.py").is_file()


def test_trees_of_moving_refs_are_evicted_first_and_recent_ones_are_spared(
    fake_github: FakeGitHub, tmp_path: Path
) -> None:
    # Given a branch fetched (a tree nobody reuses) and a cache room for one tree
    fake_github.commit(REPO, SHA, TREE)
    fake_github.commit(REPO, "main", TREE)
    roomy = GitHubSource(
        GitHubClient(fake_github.url, fake_github.token), tmp_path, max_cache=10 * _tree_bytes()
    )
    roomy.localize(DeploymentSpec(source_path=f"github://{REPO}@main/services"))
    shop = tmp_path / "acme" / "shop"
    (unpinned,) = shop.iterdir()
    os.utime(unpinned, (1, 1))
    # When a pinned tree is fetched into a cache that must shrink
    tight = GitHubSource(
        GitHubClient(fake_github.url, fake_github.token), tmp_path, max_cache=_tree_bytes()
    )
    tight.localize(DeploymentSpec(source_path=f"github://{REPO}@{SHA}/services"))
    # Then the branch's tree went, and the pinned one (just handed out) stays
    assert [p.name for p in shop.iterdir()] == [SHA]
    # And a tree used within keep_recent is never deleted, even over the bound
    tiny = GitHubSource(GitHubClient(fake_github.url, fake_github.token), tmp_path, max_cache=1)
    tiny.localize(DeploymentSpec(source_path=f"github://{REPO}@{SHA}/services"))
    assert [p.name for p in shop.iterdir()] == [SHA]
