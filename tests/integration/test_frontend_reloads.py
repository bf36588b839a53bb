"""Deploys reload the front end at the same moment: each reload must find the ports the
others are opening, never try to open one twice ("address already in use")."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from shared.adapters.local.frontend import FrontEnd
from shared.adapters.local.processes import kept_port

PORTS = 8


async def _reload_at_once(folder: Path) -> list[dict[str, Any]]:
    front = FrontEnd(folder)
    await front.start()  # no routes yet
    try:
        ports = [kept_port() for _ in range(PORTS)]
        backends = [{"revision": "r1", "upstream": "http://127.0.0.1:9", "percent": 100}]
        routes = {
            str(port): {"key": f"k{i}", "service": f"s{i}", "tag": "", "backends": backends}
            for i, port in enumerate(ports)
        }
        (folder / "routes.json").write_text(json.dumps({"routes": routes}))
        answers = await asyncio.gather(*(front.reload() for _ in range(5)))
        assert sorted(front.sites) == sorted(ports)
        return list(answers)
    finally:
        await front.close()


def test_reloads_at_the_same_moment_open_each_port_once(tmp_path: Path) -> None:
    # A thread of its own: Playwright's sync API may leave this thread's loop running.
    with ThreadPoolExecutor(1) as pool:
        answers = pool.submit(asyncio.run, _reload_at_once(tmp_path)).result()
    assert [a["failed"] for a in answers] == [{}] * 5
    assert all(len(a["ports"]) == PORTS for a in answers)
