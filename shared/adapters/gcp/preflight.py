"""`archdeploy preflight`: what a Google Cloud deploy of an architecture needs, checked first.

Each check asks the API that decides, over REST with the caller's Application Default
Credentials (google-auth's `AuthorizedSession`; no further client library: five small
GET/POST calls do not justify four more SDKs in the functions' images, and one fake HTTP
server serves all of them in tests):

    api        Service Usage services.get: the API is ENABLED in the project
               (https://cloud.google.com/service-usage/docs/reference/rest/v1/services/get)
    repository Artifact Registry repositories.get: the image repository exists in its
               region and project; pushing does not create it
               (https://cloud.google.com/artifact-registry/docs/configure-cloud-build)
    act-as     IAM serviceAccounts.testIamPermissions(iam.serviceAccounts.actAs): the
               account exists and the caller may deploy or build as it
               (https://cloud.google.com/run/docs/configuring/service-accounts)
    secret     Secret Manager secrets.get and getIamPolicy (or the project's policy): the
               secret exists and the service's account holds roles/secretmanager.secretAccessor
               (https://cloud.google.com/run/docs/configuring/secrets)
    push       the repository's (or the project's) policy gives the build account
               roles/artifactregistry.writer
               (https://cloud.google.com/artifact-registry/docs/access-control)

Run it as the identity that deploys (the worker: impersonate archdeploy-worker) so act-as
answers for it; reading policies needs the *.getIamPolicy permissions of a reviewer role.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.adapters.gcp.cloud_run import service_account_email
from shared.architecture.model import Architecture

if TYPE_CHECKING:
    from shared.settings import Settings

ACT_AS = "iam.serviceAccounts.actAs"
SECRET_READERS = {"roles/secretmanager.secretAccessor", "roles/secretmanager.admin", "roles/owner"}
PUSHERS = {
    "roles/artifactregistry.writer",
    "roles/artifactregistry.repoAdmin",
    "roles/artifactregistry.admin",
    "roles/owner",
}
BASE_APIS = (
    "run.googleapis.com",
    "cloudbuild.googleapis.com",
    "artifactregistry.googleapis.com",
    "iam.googleapis.com",
)


@dataclass(frozen=True)
class Endpoints:
    serviceusage: str = "https://serviceusage.googleapis.com"
    artifactregistry: str = "https://artifactregistry.googleapis.com"
    iam: str = "https://iam.googleapis.com"
    secretmanager: str = "https://secretmanager.googleapis.com"
    resourcemanager: str = "https://cloudresourcemanager.googleapis.com"

    @classmethod
    def all_at(cls, base: str) -> Endpoints:
        """Every API at one base URL (a fake serving all their paths)."""
        base = base.rstrip("/")
        return cls(base, base, base, base, base)


@dataclass(frozen=True)
class Check:
    kind: str
    subject: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class Needs:
    """What deploying an architecture needs from Google Cloud."""

    apis: dict[str, set[str]] = field(default_factory=dict)  # project -> APIs
    repositories: set[tuple[str, str, str]] = field(default_factory=set)  # project, loc, repo
    accounts: set[str] = field(default_factory=set)  # emails to deploy or build as
    secrets: set[tuple[str, str]] = field(default_factory=set)  # secret resource, account
    build_account: str = ""


def needs_of(
    arch: Architecture,
    *,
    region: str,
    image_repo: str,
    default_service_account: str = "",
    build_service_account: str = "",
) -> Needs:
    """What `arch` needs, resolved the way `GcpDeployer` resolves it."""
    project = arch.project_id
    found = Needs(apis={project: set(BASE_APIS)})
    found.build_account = service_account_email(build_service_account, project)
    if found.build_account:
        found.accounts.add(found.build_account)
    for _, spec in arch.services():
        deployment = spec.deployment
        if deployment is None:
            continue
        account = service_account_email(spec.service_account or default_service_account, project)
        if account:
            found.accounts.add(account)
        if not deployment.image:
            where = deployment.region or arch.region or region
            found.repositories.add(_repository(deployment.image_repo or image_repo, project, where))
        for secret in deployment.secret_environment_vars:
            name = secret.value_from.partition("/versions/")[0]
            if not name.startswith("projects/"):
                name = f"projects/{project}/secrets/{name}"
            found.secrets.add((name, account))
            found.apis.setdefault(name.split("/")[1], set()).add("secretmanager.googleapis.com")
    return found


def _repository(repo: str, project: str, region: str) -> tuple[str, str, str]:
    """(project, location, repository) of an image_repo: a name, or HOST/PROJECT/REPO."""
    if "/" not in repo:
        return project, region, repo
    host, owner, name = [*repo.rstrip("/").split("/"), "", ""][:3]
    return owner, host.removesuffix("-docker.pkg.dev"), name


class Preflight:
    def __init__(self, session: Any, endpoints: Endpoints) -> None:
        self._session = session
        self._at = endpoints

    def run(self, needs: Needs) -> list[Check]:
        checks = [
            self.api(project, api)
            for project, apis in sorted(needs.apis.items())
            for api in sorted(apis)
        ]
        checks += [self.repository(*repo) for repo in sorted(needs.repositories)]
        checks += [self.act_as(account) for account in sorted(needs.accounts)]
        checks += [self.secret(name, account) for name, account in sorted(needs.secrets)]
        if needs.build_account:
            checks += [self.push(*repo, needs.build_account) for repo in sorted(needs.repositories)]
        return checks

    def api(self, project: str, api: str) -> Check:
        status, body = self._call(
            "GET", f"{self._at.serviceusage}/v1/projects/{project}/services/{api}"
        )
        subject = f"{api} in {project}"
        if status == 200 and body.get("state") == "ENABLED":
            return Check("api", subject, True, "enabled")
        fix = f"gcloud services enable {api} --project {project}"
        return Check("api", subject, False, _why(status, body, "not enabled"), fix)

    def repository(self, project: str, location: str, repo: str) -> Check:
        resource = f"projects/{project}/locations/{location}/repositories/{repo}"
        status, body = self._call("GET", f"{self._at.artifactregistry}/v1/{resource}")
        subject = f"{location}-docker.pkg.dev/{project}/{repo}"
        if status == 200:
            return Check("repository", subject, True, "exists")
        fix = (
            f"gcloud artifacts repositories create {repo} --repository-format=docker "
            f"--location={location} --project={project} (or set image_repo)"
        )
        return Check("repository", subject, False, _why(status, body, "not found"), fix)

    def act_as(self, account: str) -> Check:
        url = f"{self._at.iam}/v1/projects/-/serviceAccounts/{account}:testIamPermissions"
        status, body = self._call("POST", url, {"permissions": [ACT_AS]})
        if status == 200 and ACT_AS in body.get("permissions", []):
            return Check("act-as", account, True, "exists, and the caller may act as it")
        if status == 404:
            fix = f"create it: gcloud iam service-accounts create {account.split('@')[0]}"
            return Check("act-as", account, False, "the service account does not exist", fix)
        fix = (
            f"gcloud iam service-accounts add-iam-policy-binding {account} "
            "--member=serviceAccount:WORKER --role=roles/iam.serviceAccountUser"
        )
        return Check(
            "act-as", account, False, _why(status, body, "the caller may not act as it"), fix
        )

    def secret(self, name: str, account: str) -> Check:
        subject = f"{name} for {account or 'the default account'}"
        status, body = self._call("GET", f"{self._at.secretmanager}/v1/{name}")
        if status != 200:
            fix = f"gcloud secrets create {name.rsplit('/', 1)[-1]} --project {name.split('/')[1]}"
            return Check("secret", subject, False, _why(status, body, "not found"), fix)
        roles = self._roles(f"{self._at.secretmanager}/v1/{name}:getIamPolicy", "GET", account)
        roles |= self._project_roles(name.split("/")[1], account)
        if roles & SECRET_READERS:
            return Check("secret", subject, True, "exists and is readable by the account")
        fix = (
            f"gcloud secrets add-iam-policy-binding {name.rsplit('/', 1)[-1]} --project "
            f"{name.split('/')[1]} --member=serviceAccount:{account} "
            "--role=roles/secretmanager.secretAccessor"
        )
        return Check("secret", subject, False, "the account may not read it", fix)

    def push(self, project: str, location: str, repo: str, account: str) -> Check:
        resource = f"projects/{project}/locations/{location}/repositories/{repo}"
        roles = self._roles(
            f"{self._at.artifactregistry}/v1/{resource}:getIamPolicy", "GET", account
        )
        roles |= self._project_roles(project, account)
        subject = f"{account} -> {location}-docker.pkg.dev/{project}/{repo}"
        if roles & PUSHERS:
            return Check("push", subject, True, "the build account may push")
        fix = (
            f"gcloud artifacts repositories add-iam-policy-binding {repo} --location={location} "
            f"--project={project} --member=serviceAccount:{account} "
            "--role=roles/artifactregistry.writer"
        )
        return Check("push", subject, False, "the build account may not push there", fix)

    def _project_roles(self, project: str, account: str) -> set[str]:
        url = f"{self._at.resourcemanager}/v1/projects/{project}:getIamPolicy"
        return self._roles(url, "POST", account)

    def _roles(self, url: str, method: str, account: str) -> set[str]:
        status, body = self._call(method, url, {} if method == "POST" else None)
        member = f"serviceAccount:{account}"
        if status != 200:
            return set()
        return {
            b.get("role", "") for b in body.get("bindings", []) if member in b.get("members", [])
        }

    def _call(self, method: str, url: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        import requests

        try:
            response = self._session.request(method, url, json=body, timeout=30)
        except requests.RequestException as exc:
            return 0, {"error": {"message": f"no answer: {exc}"}}
        try:
            data = response.json()
        except ValueError:
            data = {}
        return response.status_code, data if isinstance(data, dict) else {}


def _why(status: int, body: dict[str, Any], default: str) -> str:
    message = (body.get("error") or {}).get("message", "")
    if status in (0, 401, 403) or (status >= 500):
        return f"could not check (HTTP {status}): {message or default}"
    return f"{default} (HTTP {status})" if status != 200 else default


def render(checks: Iterable[Check]) -> str:
    """A plain table: status, check, subject, detail, and the fix of each failure."""
    rows = [("", "CHECK", "SUBJECT", "RESULT")]
    fixes = []
    for check in checks:
        rows.append(("ok" if check.ok else "FAIL", check.kind, check.subject, check.detail))
        if not check.ok and check.fix:
            fixes.append(f"  {check.kind} {check.subject}: {check.fix}")
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(widths[i]) if i < 3 else cell for i, cell in enumerate(row))
        for row in rows
    ]
    return "\n".join([*lines, *(["", "fixes:", *fixes] if fixes else [])])


def session_for(base_url: str = "") -> Any:
    """An authorized session with Application Default Credentials; with `base_url` (a fake,
    ARCHDEPLOY_PREFLIGHT_BASE_URL) a plain one, as the fake needs no credentials."""
    if base_url:
        import requests

        return requests.Session()
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    return AuthorizedSession(credentials)  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class PreflightReport:
    text: str  # the table of checks, with the fix for each failure
    ok: bool


def run_preflight(architecture: Architecture, settings: Settings) -> PreflightReport:
    """Every check for `architecture` through the real APIs (or, with
    ARCHDEPLOY_PREFLIGHT_BASE_URL, a stand-in for all of them, as the tests use)."""
    needs = needs_of(
        architecture,
        region=settings.region,
        image_repo=settings.image_repo,
        default_service_account=settings.default_service_account,
        build_service_account=settings.build_service_account,
    )
    base = os.environ.get("ARCHDEPLOY_PREFLIGHT_BASE_URL", "")
    endpoints = Endpoints.all_at(base) if base else Endpoints()
    found = Preflight(session_for(base), endpoints).run(needs)
    return PreflightReport(render(found), all(check.ok for check in found))
