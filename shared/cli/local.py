"""The embedded state folder as the CLI uses it: where it is, who holds it, and Ctrl-C.

- Anchored: the state of `up FILE`/`down FILE` lives beside FILE, in
  `<FILE's folder>/.archdeploy`, wherever the command runs from (`--state-dir` or
  `ARCHDEPLOY_STATE_DIR` override it). Commands without a FILE (`status`, `runs`,
  `cancel`) read `./.archdeploy`, or the folder of `--file`.
- Locked: `up` and `down` hold `<state>/lock` (flock) for their whole life; a second
  one waits, saying for whom, or with `--no-wait` refuses (exit 2).
- Private: the folder is 0700 and what archdeploy writes in it 0600.
- Ctrl-C: the first cancels the run (nothing new starts, health waits abort, a
  half-started service is stopped) and ends it `cancelled`, exit 130; a second exits at
  once, and the next command ends the run as abandoned.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click

from shared.errors import UsageError

STATE_DIR_NAME = ".archdeploy"
EXIT_INTERRUPTED = 130
Fn = TypeVar("Fn", bound=Callable[..., Any])


def no_wait_option(func: Fn) -> Fn:
    return click.option(
        "--no-wait",
        is_flag=True,
        help="Refuse (exit 2) instead of waiting when another up/down holds the state.",
    )(func)


def state_file_option(func: Fn) -> Fn:
    return click.option(
        "--file",
        "-f",
        "file",
        type=click.Path(dir_okay=False),
        default=None,
        help="Read the state beside this architecture file (default: ./.archdeploy).",
    )(func)


def anchored_state_dir(settings: Any, file: str | None) -> Path:
    """The state folder: the explicit one if any, else beside `file`, else ./.archdeploy."""
    explicit = "state_dir" in settings.model_fields_set
    if explicit or file is None:
        return Path(settings.state_dir).absolute()
    return Path(file).absolute().parent / STATE_DIR_NAME


def check_readable(state_dir: Path) -> None:
    """For commands that only read: the folder must exist, be a folder and be writable
    (reading a SQLite store in WAL mode writes beside it). Nothing is created."""
    if not state_dir.exists():
        raise UsageError(
            f"no runs here: {state_dir} does not exist (run `archdeploy up FILE` first, "
            "or point at the state with --file FILE or --state-dir DIR)"
        )
    check_writable(state_dir)


def prepare(state_dir: Path) -> None:
    """Create the folder (0700) if needed and make what this process writes 0600."""
    if state_dir.exists() and not state_dir.is_dir():
        raise UsageError(_not_a_folder(state_dir))
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(_not_a_folder(state_dir)) from None
    except PermissionError:
        raise UsageError(_not_writable(state_dir)) from None
    check_writable(state_dir)
    with contextlib.suppress(OSError):
        if state_dir.stat().st_uid == os.getuid():
            state_dir.chmod(0o700)
    os.umask(0o077)


def check_writable(state_dir: Path) -> None:
    if not state_dir.is_dir():
        raise UsageError(_not_a_folder(state_dir))
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise UsageError(_not_writable(state_dir))


def as_usage_error(exc: OSError) -> UsageError:
    """A file system error as one line naming the path and what to do about it."""
    path = exc.filename or "a state file"
    why = exc.strerror or type(exc).__name__
    if isinstance(exc, PermissionError):
        fix = "give yourself access to it (chmod u+rw), or pass --state-dir DIR"
    elif isinstance(exc, (NotADirectoryError, FileExistsError)):
        fix = "a file is where a folder should be: remove it, or pass --state-dir DIR"
    else:
        fix = "check the path, or pass --state-dir DIR"
    return UsageError(f"{path}: {why}: {fix}")


def _not_a_folder(path: Path) -> str:
    return (
        f"state folder {path} is not a folder (a file is in the way): "
        "remove or rename it, or pass --state-dir DIR"
    )


def _not_writable(path: Path) -> str:
    return (
        f"state folder {path} is not writable: give yourself write access "
        f"(chmod u+rwx {path}), or pass --state-dir DIR"
    )


@contextlib.contextmanager
def state_lock(
    state_dir: Path, command: str, *, wait: bool, say: Callable[[str], None]
) -> Iterator[None]:
    """Hold the state folder's lock for the enclosed block (released when the process
    ends, however it ends). Another holder: wait (saying for whom) or, without `wait`,
    raise UsageError."""
    import fcntl
    import json

    path = state_dir / "lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise UsageError(
            f"cannot lock {path}: {exc.strerror}: {_not_writable(state_dir)}"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = _holder(fd)
            if not wait:
                raise UsageError(
                    f"{state_dir} is in use by {holder}: wait for it to finish, "
                    "or run again without --no-wait to wait for it"
                ) from None
            say(f"waiting for {holder} to finish…")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command}).encode(), 0)
        yield
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    import json

    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"archdeploy {holder['command']} (pid {holder['pid']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another archdeploy command"


class Interrupts:
    """SIGINT while a run goes: the first calls `cancel` (in a thread: the handler must
    not re-enter the store the main thread may be reading), the second exits at once.
    `at_once` runs in the handler itself, before anything else can see the signal's
    effects (it must only set a flag)."""

    def __init__(
        self,
        cancel: Callable[[], None],
        say: Callable[[str], None],
        at_once: Callable[[], None] = lambda: None,
    ) -> None:
        self.cancel = cancel
        self.say = say
        self.at_once = at_once
        self.count = 0
        self._previous: Any = None
        self._cancelling: threading.Thread | None = None
        self._settled = False

    def __enter__(self) -> Interrupts:
        import signal

        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        signal.signal(signal.SIGINT, self._previous)
        # The caller closes the bus and the store next: a cancel still going would
        # publish into a closed bus and its reverts would never run.
        self.cancel_settled()

    def cancel_settled(self) -> bool:
        """Wait for the cancel a Ctrl-C started; True the first time there was one, as
        what it published (reverts, cancellations) is then still to be waited for."""
        thread = self._cancelling
        if thread is None or self._settled:
            return False
        thread.join()
        self._settled = True
        return True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count > 1:
            self.say(
                "interrupted again: exiting now; the next archdeploy command ends the run "
                "as abandoned, and `archdeploy down FILE` stops what it started"
            )
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        self.at_once()
        self.say(
            "cancelling: nothing new starts, half-started services are stopped "
            "(Ctrl-C again to exit now)"
        )
        self._cancelling = threading.Thread(target=self.cancel, name="cancel", daemon=True)
        self._cancelling.start()


def up_embedded(
    settings: Any, request: Any, services: int, *, wait: bool, say: Callable[[str], None]
) -> tuple[Any, bool]:
    """Run `request` in this process, holding the state lock; returns the final result
    and whether Ctrl-C cancelled it. Runs whose driver is gone are ended first."""
    from shared.adapters.local.deployer import LocalDeployer
    from shared.bootstrap import embedded, make_deployer
    from shared.cli.progress import follow
    from shared.core.control import cancel_run

    state_dir = Path(settings.state_dir)
    with state_lock(state_dir, "up", wait=wait, say=say):
        deployer = make_deployer(settings)
        if isinstance(deployer, LocalDeployer):
            deployer.environment = request.environment or ""
        system = embedded(settings, deployer=deployer)
        runs: list[str] = []  # the run, once created
        created = threading.Event()  # set once dispatch has ended, whether a run exists

        def cancel() -> None:
            created.wait()  # a Ctrl-C during dispatch cancels the run dispatch creates
            interrupted = getattr(system.rt.deployer, "interrupted", None)
            if interrupted is not None:
                interrupted.set()
            for run_id in runs:
                cancel_run(run_id, system.rt, by="Ctrl-C")

        # The same Ctrl-C reaches a release's verify command: its runner must know.
        checks = getattr(system.rt.checks, "interrupted", None)
        interrupts = Interrupts(cancel, say, checks.set if checks else lambda: None)
        over = threading.Event()
        try:
            with interrupts:  # before the run exists: no Ctrl-C may leave it running
                try:
                    runs.append(_dispatch(system, request, interrupts, say))
                finally:
                    created.set()
                _started(runs[0], services, state_dir, say)
                args = (system, runs[0], say, over, interrupts)
                waiter = threading.Thread(target=_wait, args=args, daemon=True)
                waiter.start()
                result = follow(system.store, runs[0], stream=sys.stderr, done=over)
                waiter.join()
        finally:
            system.close()
    return result, interrupts.count > 0


def _dispatch(system: Any, request: Any, interrupts: Interrupts, say: Callable[[str], None]) -> str:
    """End the runs whose driver is gone, then create this one; none after a Ctrl-C."""
    from shared.cli import process
    from shared.core.control import end_abandoned

    for run_id in end_abandoned(system.rt):
        say(f"run {run_id} was abandoned (its archdeploy process is gone): ended")
    if interrupts.count:  # Ctrl-C before the run exists: none is made
        raise KeyboardInterrupt
    process.run_starts()
    return str(system.submit(request).run_id)


def _started(run_id: str, services: int, state_dir: Path, say: Callable[[str], None]) -> None:
    from shared.cli.ui import dashboard_link

    say(f"run {run_id}: {services} services, state in {state_dir}")
    if link := dashboard_link(state_dir, run_id):
        say(f"dashboard: {link}")


def _wait(
    system: Any,
    run_id: str,
    say: Callable[[str], None],
    over: threading.Event,
    interrupts: Interrupts,
) -> None:
    try:
        system.wait(run_id)
        # The bus can be idle while a Ctrl-C's cancel is still deciding what to publish.
        while interrupts.cancel_settled():
            system.wait(run_id)
    except Exception as exc:  # shown to the user; the run's record says the rest
        say(f"error: a handler gave up: {exc.__cause__ or exc}")
    finally:
        over.set()  # the progress view reads the final result now, not at its next tick


def down_local(
    settings: Any,
    names: list[str],
    project: str,
    environment: str,
    *,
    wait: bool,
    say: Callable[[str], None],
) -> str:
    """Stop `names` of this project and environment, holding the state lock; returns the
    summary. A service down cannot find is "not running", never "stopped"; a missing
    state folder is not created."""
    from shared.adapters.local.deployer import LocalDeployer

    state_dir = Path(settings.state_dir)
    stopped = 0
    if not state_dir.exists():
        for name in names:
            say(f"  {name:<24} not running")
        return f"0 services torn down, {len(names)} not running (no state in {state_dir})"
    prepare(state_dir)
    with state_lock(state_dir, "down", wait=wait, say=say):
        deployer = LocalDeployer(state_dir, project=project, environment=environment)
        for name in names:
            running = deployer.stop(name)
            stopped += running
            say(f"  {name:<24} {'stopped' if running else 'not running'}")
    return f"{stopped} services torn down, {len(names) - stopped} not running"


def show_serving(state_dir: Path, say: Callable[[str], None]) -> None:
    """Say which revision serves each local service at its stable URL and, when traffic
    is split or revisions are tagged, each revision's percent and tag URLs; starts the
    local front end again if it died (creates nothing when nothing was deployed)."""
    from shared.adapters.local.deployer import LocalDeployer
    from shared.adapters.local.instances import alive
    from shared.adapters.local.traffic import describe
    from shared.errors import BackendError

    if not (state_dir / "frontend" / "routes.json").exists():
        return
    deployer = LocalDeployer(state_dir)
    records = [deployer.instances.read(key) for key in deployer.instances.known_keys()]
    serving = [r for r in records if r is not None and "fingerprint" in r]
    if not serving:
        return
    try:
        deployer.gateway.ensure()
    except BackendError as exc:
        say(f"warning: {exc}")
    say("local services (project/environment/service, serving revision, stable URL):")
    for record in serving:
        state = "serving" if alive(record) else "revision not running"
        say(f"  {record['key']:<40} {record['revision']:<30} {record['url']}  {state}")
        traffic = deployer.traffic_at(str(record["key"]))
        if traffic is not None and (len(traffic.percents) > 1 or traffic.tags):
            for line in describe(traffic):  # revision, percent of the stable URL, tags
                say(f"    {line}")


def open_store(settings: Any, say: Callable[[str], None]) -> Any:
    """The run store for a command that reads it (`status`, `runs`), creating nothing;
    embedded runs whose driver is gone are ended as abandoned first."""
    from shared.adapters.local.inprocess_bus import InProcessBus
    from shared.bootstrap import make_store
    from shared.core.control import end_abandoned
    from shared.core.runtime import Driver, Runtime

    if settings.store_kind == "sqlite":
        check_readable(Path(settings.state_dir))
    store = make_store(settings)
    if settings.bus_kind == "inprocess":
        rt = Runtime(store=store, bus=InProcessBus(parallelism=1), driver=Driver.this_process())
        for run_id in end_abandoned(rt):
            say(f"run {run_id} was abandoned (its archdeploy process is gone): ended")
    return store
