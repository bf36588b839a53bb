"""`python -I supervise.py CMD...`: run CMD so that nothing it starts outlives its parent.

`launch` asks the kernel to SIGTERM its direct child when the launching process dies,
even by SIGKILL (PR_SET_PDEATHSIG). That reaches the direct child only, and `gcloud`
moves itself into a process group of its own, so neither the signal nor a group kill
reaches an emulator's JVM. This supervisor is that direct child and leads a session;
on SIGTERM it ends every process of its session, grandchildren included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from types import FrameType

GRACE = 3.0  # seconds between SIGTERM and SIGKILL: inside the 5 s a caller allows us


def session_members(sid: int) -> list[int]:
    """Pids in session `sid` (from /proc/PID/stat: field 6 is the session id)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry))
    return members


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def end_session(child: subprocess.Popen[bytes], grace: float = GRACE) -> None:
    """SIGTERM the session, reap our child, SIGKILL whatever is left after `grace`."""
    sid = os.getsid(0)
    signal_all(session_members(sid), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        child.poll()
        if not session_members(sid):
            return
        time.sleep(0.05)
    signal_all(session_members(sid), signal.SIGKILL)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: supervise.py COMMAND [ARG...]", file=sys.stderr)
        return 2
    child = subprocess.Popen(argv)

    def on_signal(signum: int, _: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        end_session(child)
        child.poll()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = child.wait()
    end_session(child)  # what the command left behind when it ended by itself
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
