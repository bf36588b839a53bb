"""Local processes for `LocalDeployer`: services (start, probe, stop), pip, and shared files.

A service runs detached (no archdeploy process is its parent, so it outlives the CLI that
started it) in its own session and process group, as a container has its own PID
namespace: stopping the group ends everything the service started. A recorded process is
identified by its pid plus its kernel start time from /proc, so a pid that the system
has since given to another program is never signalled.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import http.client
import json
import logging
import os
import random
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from shared.errors import BackendError

log = logging.getLogger(__name__)

STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
_POLL = 0.05  # seconds
_PIP_TIMEOUT = 900.0  # seconds
_PROC = Path("/proc")


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now (the service binds it next),
    from the kernel's ephemeral range, so never one kept as some service's stable port,
    and never one this process handed out lately (two revisions starting at once would
    otherwise be given the same port: the kernel frees it when this socket closes)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        with _HANDED_LOCK:
            if port not in _HANDED_OUT:
                _HANDED_OUT.append(port)
                return port
    return port


def kept_port(rng: random.Random | None = None) -> int:
    """A free loopback port to keep for a long time (a stable URL, the front end's control
    port), chosen below the kernel's ephemeral range: ports there are also what the kernel
    gives outgoing connections and `free_port`, so one kept there, unbound while its
    service is down, could be taken by them."""
    low = _ephemeral_low()
    pick = rng or random.SystemRandom()
    for _ in range(200):
        port = pick.randrange(_KEPT_LOW, low)
        with _HANDED_LOCK:
            if port in _HANDED_OUT:
                continue  # given to a revision still starting: not bound yet
        if port_free(port):
            with _HANDED_LOCK:
                _HANDED_OUT.append(port)
            return port
    return free_port()  # a crowded range: fall back to the kernel's choice


_KEPT_LOW = 20000
# Ports this process handed out lately: a server binds its port only once its process
# has started, and two starting at once must not be given the same one meanwhile.
_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=1024)
_HANDED_LOCK = threading.Lock()


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    return max(low, _KEPT_LOW + 1000)


def port_free(port: int) -> bool:
    """Whether loopback `port` is free now (a rolled-back service asks for its old one).

    Connections of the port's last owner in TIME_WAIT do not count, as for a server that
    sets SO_REUSEADDR (http.server, uvicorn and gunicorn all do).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclasses.dataclass(frozen=True)
class Spawned:
    pid: int  # the monitor: alive exactly as long as the service
    pgid: int
    started: int | None  # the monitor's start time, see `start_time`
    log_offset: int  # where this run's output starts in the log


# A short-lived shell in a new session backgrounds a monitor subshell and exits. The
# service thus belongs to no archdeploy process: a later CLI can stop it, and no Popen is
# left behind to reap it. The monitor writes the exit code to the log when it ends.
_LAUNCHER = (
    'cd "$1" || exit 127; log=$2; shift 2; '
    '( umask 022; "$@"; echo "--- exited with code $?" ) </dev/null >>"$log" 2>&1 & echo $!'
)

# Every process a local service starts carries this variable (its instance's marker), so
# `stop_marked` finds them all: descendants that left the service's process group or
# session (a daemon's double fork + setsid) included.
SERVICE_MARKER = "ARCHDEPLOY_SERVICE_ID"


def spawn(command: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_path: Path) -> Spawned:
    """Start `command` in `cwd`, in a new session, stdout and stderr appended to `log_path`.

    Raises OSError when it cannot be started.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        # A killed predecessor may have left its last line unterminated.
        separator = "\n" if out.tell() else ""
        out.write(f"{separator}--- {stamp} archdeploy starts: {' '.join(command)}\n".encode())
        offset = out.tell()
    launch = ["/bin/sh", "-c", _LAUNCHER, "archdeploy-launch", str(cwd), str(log_path), *command]
    with subprocess.Popen(
        launch,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as launcher:
        try:
            out_text, err_text = launcher.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            launcher.kill()
            raise OSError(f"cannot start {command[0]}: /bin/sh did not launch it") from None
    if launcher.returncode != 0 or not out_text.strip().isdigit():
        raise OSError(f"cannot start {command[0]} in {cwd}: {err_text.strip() or out_text.strip()}")
    pid = int(out_text)
    return Spawned(pid=pid, pgid=launcher.pid, started=start_time(pid), log_offset=offset)


def probe(url: str, timeout: float) -> tuple[bool, str]:
    """GET `url`: (answered 2xx, what it answered)."""
    # Loopback probes must not go through a proxy configured for the internet.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return 200 <= response.status < 300, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        exc.close()
        return False, f"HTTP {exc.code}"
    except (OSError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return False, str(reason) or type(reason).__name__


def probe_threshold(url: str, timeout: float, failures: int = 3) -> tuple[bool, str]:
    """Healthy unless `failures` probes in a row fail, as Cloud Run's probes judge
    (`failureThreshold`, default 3: cloud.google.com/run/docs/configuring/healthchecks).
    One slow answer on a loaded machine must not get a healthy service redeployed."""
    healthy, answer = probe(url, timeout)
    for _ in range(failures - 1):
        if healthy:
            break
        time.sleep(0.2)
        healthy, answer = probe(url, timeout)
    return healthy, answer


def wait_healthy(
    process: Spawned, url: str, timeout: float, stop: threading.Event | None = None
) -> str | None:
    """Poll `url` until it answers 2xx. Returns None then, else why it did not; gives up
    at once when `stop` is set (Ctrl-C)."""
    deadline = time.monotonic() + timeout
    answer = "no answer"
    while True:
        if stop is not None and stop.is_set():
            return "interrupted before it was healthy"
        if process.started is None or start_time(process.pid) != process.started:
            return f"the process exited before GET {url} answered 2xx"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return f"not healthy after {timeout:g}s: GET {url} last answered {answer}"
        healthy, answer = probe(url, min(1.0, remaining))
        if healthy:
            return None
        pause = min(0.1, max(0.0, deadline - time.monotonic()))
        if stop is not None:
            stop.wait(pause)
        else:
            time.sleep(pause)


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot); None if it is gone or a zombie.

    Without /proc (not Linux) a live pid reports 0, so pid reuse goes undetected there.
    """
    if not _PROC.is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0
        return 0
    fields = _stat(pid)
    return None if fields is None or fields[0] == "Z" else int(fields[19])


def stop_group(pid: int, pgid: int, started: int | None, *, grace: float = STOP_GRACE) -> bool:
    """End the process group `pgid` of `pid`: SIGTERM, then SIGKILL after `grace` seconds.

    `pid` is the process the service's life is tied to and `started` its recorded start
    time (None: not known, e.g. just spawned). If `pid` has ended or now runs another
    program, nothing is signalled: its group id may since belong to strangers.
    Returns False if signalled processes outlived SIGKILL.
    """
    fields = _stat(pid)
    if _PROC.is_dir() and started is not None and (fields is None or int(fields[19]) != started):
        if fields is not None:
            log.warning("pid %d now runs another program: not signalling it", pid)
        return True
    if not _signal_group(pgid, signal.SIGTERM) or _wait_group_gone(pgid, grace):
        return True
    log.warning("process group %d outlived SIGTERM by %.1fs: sending SIGKILL", pgid, grace)
    _signal_group(pgid, signal.SIGKILL)
    return _wait_group_gone(pgid, grace)


def marked(prefix: str) -> list[psutil.Process]:
    """Live processes whose `SERVICE_MARKER` starts with `prefix` (this user's: the
    environment of another user's process is not readable, and ours never run as one)."""
    found = []
    for proc in psutil.process_iter():
        try:
            value = proc.environ().get(SERVICE_MARKER, "")
            if value.startswith(prefix) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def stop_marked(prefix: str, *, grace: float = STOP_GRACE) -> int:
    """SIGTERM every process marked `prefix`, SIGKILL those alive `grace` seconds later.

    Returns how many there were. A marker is unique to one state folder and instance, so
    this never signals a stranger, even one that reuses a recorded pid."""
    if not prefix:
        raise ValueError("an empty marker prefix would match every service")
    procs = marked(prefix)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        log.warning("pid %d (%s) outlived SIGTERM by %.1fs: SIGKILL", proc.pid, prefix, grace)
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)
    return len(procs)


def processes_in(directory: Path) -> list[int]:
    """Live (not zombie) processes whose working directory is inside `directory`."""
    root = str(directory.resolve())
    found = []
    for entry in _PROC.glob("[0-9]*"):
        with contextlib.suppress(OSError):
            cwd = os.readlink(entry / "cwd")
            if (cwd == root or cwd.startswith(root + os.sep)) and start_time(int(entry.name)):
                found.append(int(entry.name))
    return found


def tail(path: Path, offset: int = 0, lines: int = 20) -> str:
    """The last `lines` lines of `path` after `offset`."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(offset, handle.seek(0, os.SEEK_END) - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no output: {exc})"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(no output)"


def pip_install(python: str, requirements: Path, target: Path, *, cwd: Path) -> None:
    """`python -m pip install --target target -r requirements`, run in `cwd`.

    Raises BackendError with pip's last output lines when it fails.
    """
    command = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    command += ["--no-input", "--no-compile", "--target", str(target), "-r", str(requirements)]
    log.info("installing %s with pip", requirements)
    try:
        done = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=_PIP_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BackendError(f"pip install -r {requirements} timed out", retryable=True) from exc
    if done.returncode != 0:
        output = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise BackendError(
            f"pip install -r {requirements} failed (exit {done.returncode}):\n{output}"
        )


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock on `path` across processes and threads.

    flock locks belong to the open file description, so this also excludes other
    threads of this process, each of which opens the file itself.
    """
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_json_atomic(path: Path, document: Mapping[str, Any]) -> None:
    """Replace `path` with `document` so that readers see the old or the new file, whole.

    Owner-only (0600): records hold a service's environment, which may be sensitive."""
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(staging, path)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [0] state ... [19] starttime."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces and parentheses.
    return raw[raw.rindex(")") + 2 :].split()


def _signal_group(pgid: int, signum: int) -> bool:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if not _group_alive(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


def _group_alive(pgid: int) -> bool:
    if not _PROC.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    # Zombies count as gone: an orphan's zombie waits for an init that may never reap it.
    for entry in _PROC.glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False
