"""The release checks' runner (`shared.ports.CheckRunner`): HTTP requests and commands.

An HTTP check GETs the tag URL plus its path and passes on the expected status (and the
text it must contain); a command check runs argv with `TARGET_URL` in its environment and
passes on exit 0. Both keep what was answered, trimmed, so a failed release names it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping

from shared.architecture.model import HttpCheck, VerifyCheck
from shared.messages import CheckOutcome

# What a failed check keeps of a response or an output: enough to say why.
KEEP_CHARS = 2000


def _trimmed(text: str) -> str:
    text = text.strip()
    return text if len(text) <= KEEP_CHARS else text[:KEEP_CHARS] + " [...]"


class HttpAndCommandChecks:
    """Runs checks on this machine: urllib for HTTP, a subprocess for commands.

    `interrupted` is set by whoever takes this process's Ctrl-C (the embedded CLI, in its
    signal handler): a command that fails once it is set failed because the same Ctrl-C
    reached it (it shares the terminal's process group), and says so."""

    def __init__(self) -> None:
        self.interrupted = threading.Event()

    def run(self, check: VerifyCheck, target_url: str) -> CheckOutcome:
        if check.http is not None:
            return http_check(check.name, check.http, target_url)
        argv = check.command or []
        return command_check(check.name, argv, target_url, check.timeout, None, self.interrupted)


def http_check(
    name: str,
    http: HttpCheck,
    target_url: str,
    *,
    headers: Mapping[str, str] | None = None,
    opener: urllib.request.OpenerDirector | None = None,
) -> CheckOutcome:
    """GET the target URL plus the check's path, with `headers` (e.g. an ID token)."""
    url = target_url.rstrip("/") + http.path
    sent = {"User-Agent": "archdeploy-release-check", **(headers or {})}
    request = urllib.request.Request(url, headers=sent)
    open_url = opener.open if opener is not None else urllib.request.urlopen
    try:
        with open_url(request, timeout=http.timeout or None) as response:
            status, body = response.status, response.read(64_000)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(64_000)
    except (OSError, ValueError) as exc:  # refused, unreachable, timed out, a bad URL
        return CheckOutcome(name=name, passed=False, detail=f"GET {url}: {exc}")
    text = body.decode("utf-8", "replace")
    if status != http.status:
        detail = f"GET {url} answered {status}, not {http.status}: {_trimmed(text)}"
        return CheckOutcome(name=name, passed=False, detail=detail)
    if http.contains is not None and http.contains not in text:
        detail = f"GET {url} answered {status} without {http.contains!r}: {_trimmed(text)}"
        return CheckOutcome(name=name, passed=False, detail=detail)
    return CheckOutcome(name=name, passed=True, detail=f"GET {url} answered {status}")


def command_check(
    name: str,
    argv: list[str],
    target_url: str,
    timeout: float,
    extra_env: Mapping[str, str] | None = None,
    ctrl_c: threading.Event | None = None,
) -> CheckOutcome:
    """Run `argv`; it passes on exit 0. One that died of SIGINT (or exited 130) is
    `interrupted` only if this process's Ctrl-C handler sets `ctrl_c` (at once, or within
    `CTRL_C_GRACE`: the same key press reaches the command and this process together).
    Without that, nobody pressed Ctrl-C (a worker on Cloud Run has no terminal): the
    command failed, and its run must not end `cancelled`. Any other failure once `ctrl_c`
    is set failed because the same Ctrl-C reached it, and says so."""
    outcome = _command_outcome(name, argv, target_url, timeout, extra_env, ctrl_c)
    if ctrl_c is not None and ctrl_c.is_set() and not outcome.passed and not outcome.interrupted:
        detail = f"interrupted (Ctrl-C): {outcome.detail}"
        return outcome.model_copy(update={"interrupted": True, "detail": detail})
    return outcome


def _command_outcome(
    name: str,
    argv: list[str],
    target_url: str,
    timeout: float,
    extra_env: Mapping[str, str] | None,
    ctrl_c: threading.Event | None,
) -> CheckOutcome:
    env = {**os.environ, **(extra_env or {}), "TARGET_URL": target_url}
    try:
        done = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout or None,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        detail = f"timed out after {timeout:g}s: {_trimmed(output)}"
        return CheckOutcome(name=name, passed=False, detail=detail)
    except OSError as exc:  # not found, not executable
        return CheckOutcome(name=name, passed=False, detail=f"could not run: {exc}")
    output = _trimmed(done.stdout + done.stderr)
    if done.returncode in _INTERRUPTED and ctrl_c is not None and ctrl_c.wait(CTRL_C_GRACE):
        detail = f"interrupted (SIGINT, exit {done.returncode}): {output}"
        return CheckOutcome(name=name, passed=False, detail=detail, interrupted=True)
    if done.returncode != 0:
        detail = f"exited {done.returncode}: {output}"
        return CheckOutcome(name=name, passed=False, detail=detail)
    return CheckOutcome(name=name, passed=True, detail=output)


# Died of SIGINT, or exited as a shell does after one (128 + SIGINT).
_INTERRUPTED = (-signal.SIGINT, 128 + signal.SIGINT)
# How long a command that died of SIGINT waits for this process's Ctrl-C handler to say
# the key was pressed (it runs on the main thread, usually within milliseconds).
CTRL_C_GRACE = 2.0


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data or ""
