"""The GitHub push webhook: a pushed commit's architecture file becomes a deploy request.

Nothing in a delivery is read before its `X-Hub-Signature-256` (HMAC-SHA256 of the raw
body with the webhook secret) has been checked in constant time; without a configured
secret every delivery is refused. Then `ping` is answered, events other than `push` are
ignored, and so are pushes to tags, to branches not in `ARCHDEPLOY_WEBHOOK_BRANCHES`
(names or glob patterns) and branch deletions.

A push is not built here: a `DeployRequest` naming `github://OWNER/REPO/PATH@SHA` is
published on the requests topic and the answer (202, with the run id) leaves at once; the
dispatcher reads the file at that commit from GitHub. If GitHub keeps failing for
`ARCHDEPLOY_WEBHOOK_GIVE_UP_SECONDS` (120), the run ends failed with the reason.

GitHub signs the body only, so a captured delivery can be replayed with a new
`X-GitHub-Delivery`. The idempotency key is therefore the push itself (repository, ref,
`before` and `after`): a redelivery or a replay names the same run and starts no second
one, while a push that moves the branch back to an older commit (a different `before`)
is a new run. Runs of one branch supersede each other by push time
(`repository.pushed_at`), never by arrival: a push older than one already seen for the
branch is cancelled itself rather than replace newer code.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
import posixpath
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, ValidationError

from shared.core.dispatcher import run_id_for
from shared.core.handlers import GIVE_UP_AT
from shared.core.runtime import Runtime
from shared.doors.http_api import Refused, problem, read_body
from shared.errors import BackendError
from shared.locations import GitHubLocation
from shared.logs import http_trace_labels, log_context
from shared.messages import TOPIC_REQUESTS, DeployRequest

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)

# GitHub caps a delivery at 25 MB; nothing bigger can be a real one.
MAX_DELIVERY_BYTES = 25 * 1024 * 1024
_DELIVERY = re.compile(r"[A-Za-z0-9-]{1,100}")
_REPOSITORY = re.compile(r"[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_SECRET_FIX = "set the same secret in the GitHub webhook and in ARCHDEPLOY_WEBHOOK_SECRET"

Response = tuple[str, int, dict[str, str]]


@dataclass(frozen=True)
class WebhookConfig:
    secret: str | None
    branches: tuple[str, ...] = ("main",)
    architecture_path: str = "services.yaml"
    give_up_seconds: float = 120.0

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookConfig:
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        return cls(
            secret,
            tuple(settings.webhook_branches),
            settings.webhook_architecture_path,
            settings.webhook_give_up_seconds,
        )


class _Repository(BaseModel):
    full_name: str
    pushed_at: int | float | str | None = None  # a push event's: epoch seconds of the push


class _Pusher(BaseModel):
    name: str = ""


class PushEvent(BaseModel):
    """The fields of GitHub's push payload archdeploy reads."""

    model_config = ConfigDict(extra="ignore")
    ref: str
    before: str = ""
    after: str
    deleted: bool = False
    repository: _Repository
    pusher: _Pusher | None = None


def _refused(status: int, error: str, fix: str = "", path: str = "") -> Refused:
    return Refused(status, error, [problem(path, error, fix)])


def _json(body: Any, status: int) -> Response:
    return json.dumps(body), status, {"Content-Type": "application/json"}


def handle(request: Any, rt: Runtime, config: WebhookConfig) -> Response:
    """Answer one delivery: 401 unless signed, 202 with the run id for a push it acts on."""
    with log_context(**http_trace_labels(request.headers)):
        return _handle(request, rt, config)


def _handle(request: Any, rt: Runtime, config: WebhookConfig) -> Response:
    delivery = request.headers.get("X-GitHub-Delivery", "")
    try:
        return _answer(request, rt, config, delivery)
    except Refused as refused:
        log.warning("webhook delivery %s refused: %s", delivery[:100] or "(no id)", refused)
        return refused.response
    except BackendError as exc:
        log.warning("webhook delivery %s not queued: %s", delivery[:100], exc)
        fix = "use Redeliver on the webhook's Recent Deliveries page in a moment"
        return Refused(
            503, f"the request could not be queued: {exc}", [problem("", str(exc), fix)]
        ).response
    except Exception:  # the boundary: a bug must not answer with a stack trace
        log.error("webhook delivery %s failed unexpectedly", delivery[:100], exc_info=True)
        return Refused(500, "internal error: the function's logs have the details").response


def _answer(request: Any, rt: Runtime, config: WebhookConfig, delivery: str) -> Response:
    body = _verified_body(request, config)
    event = request.headers.get("X-GitHub-Event", "")
    if event == "ping":
        return _json({"pong": True}, 200)
    if event != "push":
        return _ignored(f"event `{event[:100] or '(none)'}` is not handled: only `push` is")
    if not _DELIVERY.fullmatch(delivery):
        raise _refused(400, "no usable X-GitHub-Delivery header", "send GitHub's delivery id")
    push = _parse_push(request, body)
    reason = _skip_reason(push, config)
    if reason:
        return _ignored(reason)
    return _submit(push, delivery, rt, config)


def _verified_body(request: Any, config: WebhookConfig) -> bytes:
    if request.method != "POST":
        raise _refused(405, f"method {request.method} not allowed", "GitHub sends POST")
    if not config.secret:
        raise _refused(
            500, "no webhook secret is configured: every delivery is refused", _SECRET_FIX
        )
    if (request.content_length or 0) > MAX_DELIVERY_BYTES:
        raise _refused(413, f"delivery larger than {MAX_DELIVERY_BYTES} bytes")
    body = read_body(request, MAX_DELIVERY_BYTES)
    if body is None:
        raise _refused(413, f"delivery larger than {MAX_DELIVERY_BYTES} bytes")
    given = request.headers.get("X-Hub-Signature-256", "")
    digest = hmac.new(config.secret.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(f"sha256={digest}".encode(), given.encode("utf-8", "replace")):
        what = "wrong" if given else "missing"
        raise _refused(401, f"X-Hub-Signature-256 {what}: the delivery is not trusted", _SECRET_FIX)
    return body


def _parse_push(request: Any, body: bytes) -> PushEvent:
    try:
        if request.mimetype == "application/x-www-form-urlencoded":
            body = parse_qs(body.decode("utf-8")).get("payload", [""])[0].encode()
        return PushEvent.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        message = f"not a push payload: {where or 'body'}: {first['msg']}"
        fix = "send GitHub's push payload as application/json"
        raise _refused(400, message, fix, where) from None
    except UnicodeDecodeError:
        raise _refused(400, "the form body is not UTF-8 text") from None


def _skip_reason(push: PushEvent, config: WebhookConfig) -> str | None:
    if push.ref.startswith("refs/tags/"):
        return f"tag {push.ref.removeprefix('refs/tags/')} pushed: only branches are deployed"
    if not push.ref.startswith("refs/heads/"):
        return f"ref {push.ref[:200]} is not a branch"
    branch = push.ref.removeprefix("refs/heads/")
    if push.deleted:
        return f"branch {branch} was deleted: nothing to deploy"
    if not any(fnmatch.fnmatchcase(branch, pattern) for pattern in config.branches):
        listed = ", ".join(config.branches) or "(none)"
        return f"branch {branch} is not deployed (ARCHDEPLOY_WEBHOOK_BRANCHES: {listed})"
    return None


def _ignored(reason: str) -> Response:
    log.info("webhook delivery ignored: %s", reason)
    return _json({"ignored": True, "reason": reason}, 202)


def push_key(push: PushEvent) -> str:
    """The push's identity: what a redelivery and a replayed body have in common."""
    return f"github-push:{push.repository.full_name}:{push.ref}:{push.before}..{push.after}"


def _pushed_at(push: PushEvent) -> float | None:
    value = push.repository.pushed_at
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _deploy_request(push: PushEvent, config: WebhookConfig) -> DeployRequest:
    """The request a push makes: the file and its sources at the pushed commit."""
    repo, sha, path = push.repository.full_name, push.after, config.architecture_path
    if not _REPOSITORY.fullmatch(repo) or ".." in repo:
        raise _refused(
            400, f"repository.full_name {repo[:200]!r} is not OWNER/REPO", "", "repository"
        )
    if not _SHA.fullmatch(sha):
        raise _refused(400, f"after {sha[:100]!r} is not a commit sha", "", "after")
    clean = posixpath.normpath(path)
    if path.startswith("/") or clean == ".." or clean.startswith("../"):
        fix = "set ARCHDEPLOY_WEBHOOK_ARCHITECTURE_PATH to a path inside the repository"
        raise _refused(500, f"architecture path {path!r} leaves the repository", fix)
    directory = posixpath.dirname(clean)
    owner, _, name = repo.partition("/")
    branch = push.ref.removeprefix("refs/heads/")
    return DeployRequest(
        architecture_uri=GitHubLocation(owner, name, sha, clean).file_uri(),
        source_root=GitHubLocation(owner, name, sha, directory).tree_uri(),
        idempotency_key=push_key(push),
        requested_by=f"github:{(push.pusher.name if push.pusher else '')[:100] or repo}",
        supersede_key=f"github:{repo}:{branch}",
        supersede_order=_pushed_at(push),
    )


def _submit(push: PushEvent, delivery: str, rt: Runtime, config: WebhookConfig) -> Response:
    request = _deploy_request(push, config)
    assert request.idempotency_key is not None
    run_id = run_id_for(request.idempotency_key)
    answer = {"run_id": run_id, "commit": push.after, "architecture": request.architecture_uri}
    if rt.store.get_run(run_id) is not None:
        log.warning("webhook delivery %s: push seen before: run %s exists", delivery, run_id)
        return _json({**answer, "duplicate": True}, 202)
    give_up_at = rt.clock().timestamp() + config.give_up_seconds
    attributes = {"run_id": run_id, GIVE_UP_AT: f"{give_up_at:.3f}"}
    rt.bus.publish(TOPIC_REQUESTS, request, attributes=attributes)
    log.info("push of %s@%s queued as run %s", push.repository.full_name, push.after, run_id)
    return _json(answer, 202)
