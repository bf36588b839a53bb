"""The local front end: one reverse proxy per state folder giving each service a stable URL.

Run as `python -m shared.adapters.local.frontend <folder> <control_port>`, detached like
the services (`shared.adapters.local.gateway` starts, finds and stops it). It serves every
port of `<folder>/routes.json` (`{"routes": {"<port>": {"key", "service", "revision",
"upstream"}}}`), forwarding each request to the revision process serving that port,
the way Cloud Run's front end forwards a service URL to its serving revision.

The control port (loopback) answers `GET /healthz` and `POST /reload`: reload reads
`routes.json` again, opens new ports, closes dropped ones, switches traffic, then waits
until requests still in flight to revisions no longer routed have finished (at most
`DRAIN_TIMEOUT`), so the caller may stop those revisions without dropping a request.

A request whose revision does not answer gets 502, a port with no serving revision 503,
each with a plain-text body naming the service.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import (
    ClientError,
    ClientSession,
    ClientTimeout,
    ServerDisconnectedError,
    TCPConnector,
    web,
)

DRAIN_TIMEOUT = 30.0  # seconds an old revision's in-flight requests may take to finish
_UPSTREAM_TIMEOUT = 300.0  # seconds, as Cloud Run's default request timeout
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_RETRYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Route = dict[str, Any]


class FrontEnd:
    """The routing table, the listening ports and the requests in flight per revision."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.routes: dict[int, Route] = {}
        self.sites: dict[int, web.TCPSite] = {}
        self.in_flight: Counter[str] = Counter()
        self.drained = asyncio.Condition()
        self.draining = 0  # reloads waiting for a drain
        self.runner = web.AppRunner(web.Application(handler_args={"max_field_size": 65536}))
        self.runner.app.router.add_route("*", "/{tail:.*}", self.proxy)
        self.session: ClientSession | None = None

    async def start(self) -> None:
        await self.runner.setup()
        self.session = ClientSession(
            connector=TCPConnector(limit=0),
            timeout=ClientTimeout(total=_UPSTREAM_TIMEOUT),
            auto_decompress=False,
            trust_env=False,
        )
        await self.reload()

    async def close(self) -> None:
        await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()

    async def reload(self) -> dict[str, Any]:
        """Apply `routes.json`; returns the ports served, those that failed to open, and
        whether old revisions drained in time."""
        wanted = read_routes(self.folder)
        failed: dict[str, str] = {}
        for port in [p for p in self.sites if p not in wanted]:
            await self.sites.pop(port).stop()
        for port in [p for p in wanted if p not in self.sites]:
            site = web.TCPSite(self.runner, "127.0.0.1", port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                failed[str(port)] = f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}"
                continue
            self.sites[port] = site
        self.routes = {p: r for p, r in wanted.items() if p in self.sites}
        drained = await self._drain()
        return {"ports": sorted(self.sites), "failed": failed, "drained": drained}

    async def _drain(self) -> bool:
        current = {str(r.get("upstream", "")) for r in self.routes.values()}

        def idle() -> bool:
            return not any(n for up, n in self.in_flight.items() if up not in current)

        self.draining += 1
        try:
            async with self.drained:
                await asyncio.wait_for(self.drained.wait_for(idle), DRAIN_TIMEOUT)
        except TimeoutError:
            return False
        finally:
            self.draining -= 1
        return True

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        port = int(sockname[1]) if sockname else 0
        route = self.routes.get(port)
        if route is None or not route.get("upstream"):
            name = route["service"] if route else f"port {port}"
            return _plain(503, f"archdeploy front end: {name} has no serving revision\n")
        upstream = str(route["upstream"])
        self.in_flight[upstream] += 1
        try:
            return await self._forward(request, upstream)
        except (ClientError, OSError, TimeoutError) as exc:
            detail = str(exc) or type(exc).__name__
            return _plain(
                502,
                f"archdeploy front end: service {route['service']} ({route.get('key', '')}):"
                f" its revision {route.get('revision', '?')} at {upstream} did not answer:"
                f" {detail}\n",
            )
        finally:
            self.in_flight[upstream] -= 1
            if self.draining:  # a reload waits for old revisions' requests to finish
                async with self.drained:
                    self.drained.notify_all()

    async def _forward(self, request: web.Request, upstream: str) -> web.Response:
        assert self.session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["X-Forwarded-Host"] = request.host
        headers["X-Forwarded-For"] = request.remote or ""
        attempts = 2 if request.method in _RETRYABLE_METHODS else 1
        for attempt in range(attempts):
            try:
                async with self.session.request(
                    request.method,
                    upstream + request.rel_url.raw_path_qs,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                ) as answer:
                    content = await answer.read()
                    kept = [
                        (k, v) for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP
                    ]
                    response = web.Response(status=answer.status, body=content)
                    for key, value in kept:
                        response.headers.add(key, value)
                    return response
            except ServerDisconnectedError:
                # A kept-alive connection the revision closed meanwhile: once more, fresh.
                if attempt + 1 >= attempts:
                    raise
        raise AssertionError("unreachable")


def read_routes(folder: Path) -> dict[int, Route]:
    try:
        document = json.loads((folder / "routes.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {int(port): dict(route) for port, route in document.get("routes", {}).items()}


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain")


async def serve(folder: Path, control_port: int) -> None:
    front = FrontEnd(folder)
    await front.start()
    control = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ports": sorted(front.sites)})

    async def reload(_: web.Request) -> web.Response:
        return web.json_response(await front.reload())

    control.router.add_get("/healthz", healthz)
    control.router.add_post("/reload", reload)
    control_runner = web.AppRunner(control)
    await control_runner.setup()
    await web.TCPSite(control_runner, "127.0.0.1", control_port, reuse_address=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"archdeploy front end: control on 127.0.0.1:{control_port}", flush=True)
    await stop.wait()
    await control_runner.cleanup()
    await front.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print(
            "usage: python -m shared.adapters.local.frontend FOLDER CONTROL_PORT", file=sys.stderr
        )
        return 2
    asyncio.run(serve(Path(argv[0]), int(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
