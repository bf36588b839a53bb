"""A process that launched children (`archdeploy dev`, or pytest's emulator fixture) is
killed with SIGKILL: its children's grandchildren, like an emulator's JVM under its
`gcloud` wrapper, must end with it, not run on as orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

LAUNCHER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from shared.devserver.emulators import launch

    folder = Path(sys.argv[1])
    # Like gcloud: the wrapper moves into a process group of its own, then forks the
    # long-lived process (`sleep`, standing for the emulator's JVM).
    wrapper = "import os, subprocess; os.setpgid(0, 0); subprocess.run(['sleep', '600'])"
    child = launch("wrapper", [sys.executable, "-c", wrapper], env={"PATH": "/usr/bin:/bin"},
                   cwd=folder, log_path=folder / "wrapper.log")
    print(child.process.pid, flush=True)
    time.sleep(600)
    """
)


def _group(sid: int) -> list[psutil.Process]:
    """The live processes of session `sid` (the supervisor's pid: it leads the session)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def _wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_sigkilled_launcher_takes_grandchildren_down(tmp_path: Path) -> None:
    pgid = 0
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert launcher.stdout is not None
        pgid = int(launcher.stdout.readline())
        names = lambda: sorted(p.name() for p in _group(pgid))  # noqa: E731
        assert _wait_until(lambda: "sleep" in names(), 30.0), names()
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=30)
        # The supervisor gets SIGTERM from the kernel and ends its group; bounded, not timed.
        assert _wait_until(lambda: not _group(pgid), 30.0), f"left running: {names()}"
    finally:
        launcher.kill()
        launcher.wait()
        launcher.stdout.close()  # type: ignore[union-attr]
        for proc in _group(pgid) if pgid else []:
            proc.kill()
