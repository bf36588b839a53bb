"""Release checks against private Cloud Run URLs: each carries a Google-signed ID token.

Cloud Run admits a request to a service that is not public only with
`Authorization: Bearer <ID token>` of an account holding roles/run.invoker on it, whose
audience (`aud`) matches "the receiving service's *.run.app URL"; "by convention, the
audience is the full URL of the target service", and "the default Google-generated URL
always remains as an accepted audience value" (run/docs/configuring/custom-audiences,
https://cloud.google.com/run/docs/configuring/custom-audiences; run/docs/authenticating/
service-to-service). A release checks a staged revision on its tag URL,
`https://TAG---SERVICE-....run.app`; the audience asked for is the service's own URL, the
tag URL without its `TAG---` prefix, which Cloud Run accepts for every URL of the service.

Tokens come from `google.oauth2.id_token.fetch_id_token` (Application Default Credentials:
the metadata server on Google Cloud, or a service-account key file), one per audience,
reused until shortly before it expires. A command check gets the token as `ID_TOKEN` in
its environment beside `TARGET_URL`.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable

from shared.adapters.checks import command_check, http_check
from shared.architecture.model import VerifyCheck
from shared.messages import CheckOutcome

TokenSource = Callable[[str], str]  # audience -> ID token

TAG_SEPARATOR = (
    "---"  # https://TAG---SERVICE-...: a tag's URL (rollouts-rollbacks-traffic-migration)
)
TOKEN_REUSE = 45 * 60.0  # seconds; Google's ID tokens live one hour


def service_audience(url: str) -> str:
    """The audience Cloud Run accepts for `url`: its scheme and host, without a tag."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.split(TAG_SEPARATOR, 1)[-1]
    return f"{parts.scheme}://{host}"


def google_id_token(audience: str) -> str:
    """An ID token for `audience` from Application Default Credentials."""
    import google.auth.transport.requests
    import google.oauth2.id_token

    request = google.auth.transport.requests.Request()
    token = google.oauth2.id_token.fetch_id_token(request, audience)  # type: ignore[no-untyped-call]
    return str(token)


class CloudRunChecks:
    """`shared.ports.CheckRunner` for Cloud Run: HTTP checks and commands with an ID token.

    `token_source` and `opener` are seams for tests (a fake token authority; a loopback
    route to a fake Cloud Run's URLs); the defaults are Google's and urllib's."""

    def __init__(
        self,
        token_source: TokenSource = google_id_token,
        *,
        opener: urllib.request.OpenerDirector | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token_source, self.opener, self.clock = token_source, opener, clock
        # Set by the embedded CLI's Ctrl-C handler (see `HttpAndCommandChecks`); never
        # on Google Cloud, where a command that exits 130 simply failed.
        self.interrupted = threading.Event()
        self._tokens: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def run(self, check: VerifyCheck, target_url: str) -> CheckOutcome:
        audience = service_audience(target_url)
        try:
            token = self.token(audience)
        except Exception as exc:  # no credentials, or credentials that cannot sign ID tokens
            detail = (
                f"no ID token for {audience}: {exc} (Cloud Run needs one to reach a private "
                "URL: run where Application Default Credentials are a service account, e.g. "
                "the worker, or make the service public with `deployment.public: true`)"
            )
            return CheckOutcome(name=check.name, passed=False, detail=detail)
        if check.http is not None:
            headers = {"Authorization": f"Bearer {token}"}
            return http_check(
                check.name, check.http, target_url, headers=headers, opener=self.opener
            )
        env = {"ID_TOKEN": token}
        argv = check.command or []
        return command_check(check.name, argv, target_url, check.timeout, env, self.interrupted)

    def token(self, audience: str) -> str:
        """A token for `audience`, fetched again once it is `TOKEN_REUSE` seconds old."""
        now = self.clock()
        with self._lock:
            cached = self._tokens.get(audience)
            if cached is not None and now - cached[0] < TOKEN_REUSE:
                return cached[1]
        token = self.token_source(audience)
        with self._lock:
            self._tokens[audience] = (now, token)
        return token
