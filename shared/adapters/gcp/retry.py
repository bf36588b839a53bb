"""One retry policy for every Google API call the GCP adapters make, and the one answer to
"is this Google error transient?" (`is_transient`) that every Google adapter uses: the
Pub/Sub bus, the Firestore store, the Cloud Storage readers, Cloud Build and Cloud Run.

The client libraries' own per-method retries are switched off (`retry=None`) so that this
is the only policy and each attempt is visible in the logs.

Transient, retried with exponential backoff and full jitter:
    429 TooManyRequests / RESOURCE_EXHAUSTED   quota or rate limit; backing off is the fix
    503 ServiceUnavailable / UNAVAILABLE       the request did not reach a healthy backend
    504 DeadlineExceeded / GatewayTimeout      the call took too long, the next may not
    500 InternalServerError / INTERNAL         usually a passing server fault (the storage
                                               client's own default retries it too)
    502 BadGateway, 409 ABORTED                a front end or a concurrent change interfered
    408 Request Timeout                        (Cloud Storage's JSON API answers it)
    RetryError                                 a client library's own retries ran out on
                                               transient errors; later may succeed
    connection errors and timeouts of the HTTP transport (Cloud Storage, REST)
Permanent, raised at once: everything else, notably 400 InvalidArgument, 401/403,
404 NotFound (callers that expect it pass it through), 412 FailedPrecondition and
409 AlreadyExists; retrying them only repeats the same answer.

A duplicate CreateBuild after an ambiguous timeout costs one extra build of the same
content-addressed image, which is cheaper than failing the run.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from shared.errors import BackendError

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_DELAY = 30.0  # seconds


def is_transient(exc: BaseException) -> bool:
    """Whether trying the same call again later can succeed (table in the module doc)."""
    import requests
    from google.api_core import exceptions as api

    transient = (
        api.TooManyRequests,  # includes ResourceExhausted
        api.ServiceUnavailable,
        api.GatewayTimeout,  # includes DeadlineExceeded
        api.InternalServerError,
        api.BadGateway,
        api.Aborted,
        api.RetryError,
    )
    if isinstance(exc, api.GoogleAPICallError) and exc.code == 408:
        return True
    connection = (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)
    return isinstance(exc, (*transient, *connection))


def describe_api_error(exc: BaseException) -> str:
    """`STATUS: message` as the API answered: `UNAVAILABLE: ...` (gRPC), `HTTP 404: ...`."""
    from google.api_core import exceptions as api

    if isinstance(exc, api.GoogleAPICallError):
        over_http = hasattr(exc.response, "status_code")  # a requests.Response
        grpc_code = None if over_http else getattr(exc.grpc_status_code, "name", None)
        status = grpc_code or (f"HTTP {exc.code}" if exc.code else type(exc).__name__)
        return f"{status}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = _MAX_DELAY

    def call(
        self,
        fn: Callable[[], T],
        *,
        context: str,
        api_call: str,
        passthrough: tuple[type[BaseException], ...] = (),
    ) -> T:
        """Call `fn` until it succeeds, fails permanently or runs out of attempts.

        `context` is the short phrase the error starts with ("building ingest").
        Exceptions of a `passthrough` type reach the caller untranslated.

        Raises:
            BackendError: naming `context`, `api_call` and the API's answer; `retryable`
                is set when the last failure was transient.
        """
        import requests
        from google.api_core import exceptions as api

        attempt = 1
        while True:
            try:
                return fn()
            except passthrough:
                raise
            except (api.GoogleAPICallError, requests.RequestException) as exc:
                transient = is_transient(exc)
                if not transient or attempt >= self.attempts:
                    raise self._error(exc, context, api_call, attempt, transient) from exc
                delay = self.delay(attempt)
                log.warning(
                    "%s: %s answered %s; attempt %d of %d, retrying in %.2fs",
                    context,
                    api_call,
                    describe_api_error(exc),
                    attempt,
                    self.attempts,
                    delay,
                )
                time.sleep(delay)
                attempt += 1

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, base * 2^(attempt-1)], capped."""
        cap = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(0, cap)

    def wait_done(self, operation: Any, *, timeout: float, interval: float, context: str) -> bool:
        """Poll a long-running operation until it is done; False if `timeout` passed first.

        Each GetOperation goes through `call`, so a transient polling error is retried
        and a persistent one raises `BackendError` (the operation may still be running).
        """
        from google.api_core.retry import Retry

        no_library_retry = Retry(predicate=lambda exc: False)  # this policy decides
        deadline = time.monotonic() + timeout
        delay = interval
        while not self.call(
            lambda: operation.done(retry=no_library_retry), context=context, api_call="GetOperation"
        ):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 20 * interval)
        return True

    @staticmethod
    def _error(
        exc: BaseException, context: str, api_call: str, attempt: int, transient: bool
    ) -> BackendError:
        tries = f" (gave up after {attempt} attempts)" if transient and attempt > 1 else ""
        message = f"{context}: {api_call} failed: {describe_api_error(exc)}{tries}"
        return BackendError(message, retryable=transient)
