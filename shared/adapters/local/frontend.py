"""The local front end: one reverse proxy per state folder giving each service a stable URL.

Run as `python -m shared.adapters.local.frontend <folder> <control_port>`, detached like
the services (`shared.adapters.local.gateway` starts, finds and stops it). It serves every
port of `<folder>/routes.json` (`shared.adapters.local.routing`), forwarding each request
to one of the revision processes serving that port, by percent, the way Cloud Run's front
end splits a service URL's traffic; a tag's port reaches its one revision. Requests and
answers are streamed, over pooled kept-alive connections to the revisions.

The control port (loopback) answers `GET /healthz` and `POST /reload`: reload reads
`routes.json` again, opens new ports, closes dropped ones, switches traffic, then waits
until requests still in flight to revisions no longer routed have finished (at most
`DRAIN_TIMEOUT`), so the caller may stop those revisions without dropping a request.

A request whose revision does not answer gets 502, a port with no serving revision 503,
each with a plain-text body naming the service.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import (
    ClientError,
    ClientResponse,
    ClientSession,
    ClientTimeout,
    DummyCookieJar,
    ServerDisconnectedError,
    TCPConnector,
    web,
)

from shared.adapters.local.routing import Route, read_routes
from shared.adapters.local.ws_relay import Streams, is_upgrade

DRAIN_TIMEOUT = 30.0  # seconds an old revision's in-flight requests may take to finish
_KEEPALIVE = 30.0  # seconds an idle connection to a revision is kept
_SMALL_BODY = 65536  # bytes: a known-length answer up to this size is relayed in one write
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


class FrontEnd:
    """The routing table, the listening ports and the requests in flight per revision."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.routes: dict[int, Route] = {}
        self.sites: dict[int, web.ServerRunner] = {}
        self.in_flight: Counter[str] = Counter()
        self.drained = asyncio.Condition()
        self.draining = 0  # reloads waiting for a drain
        self.session: ClientSession | None = None
        self.applying = asyncio.Lock()
        self.streams = Streams()  # open WebSockets: they never hold a drain (ws_relay)

    async def start(self) -> None:
        self.session = ClientSession(
            # Kept-alive, pooled connections to the revisions: no connect per request.
            connector=TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE),
            timeout=ClientTimeout(total=_UPSTREAM_TIMEOUT),
            auto_decompress=False,
            trust_env=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            # A proxy keeps no cookies (aiohttp drops those of IP hosts anyway): no cookie
            # work per request.
            cookie_jar=DummyCookieJar(),
        )
        await self.reload()

    async def close(self) -> None:
        for runner in self.sites.values():
            await runner.cleanup()
        if self.session is not None:
            await self.session.close()

    async def reload(self) -> dict[str, Any]:
        """Apply `routes.json`; returns the ports served, those that failed to open, and
        whether old revisions drained in time."""
        # One reload at a time changes the ports: deploys reload at once, and a second
        # reload would otherwise try to listen on a port the first is still opening
        # ("address already in use"). The drain waits outside, for each its own.
        async with self.applying:
            wanted = read_routes(self.folder)
            failed: dict[str, str] = {}
            for port in [p for p in self.sites if p not in wanted]:
                await self.sites.pop(port).cleanup()
            for port in [p for p in wanted if p not in self.sites]:
                error = await self._listen(port)
                if error:
                    failed[str(port)] = error
            self.routes = {p: r for p, r in wanted.items() if p in self.sites}
            await self.streams.close_all_but(self._upstreams())
        drained = await self._drain()
        return {"ports": sorted(self.sites), "failed": failed, "drained": drained}

    async def _listen(self, port: int) -> str:
        # One low-level server per port, its handler bound to the port: a request needs
        # no router and no socket lookup to find its route.
        async def handler(request: web.BaseRequest) -> web.StreamResponse:
            return await self.proxy(port, request)

        runner = web.ServerRunner(web.Server(handler, max_field_size=65536))
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
        except OSError as exc:
            await runner.cleanup()
            return f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}"
        self.sites[port] = runner
        return ""

    def _upstreams(self) -> set[str]:
        """The revisions some port routes to now."""
        return {b.upstream for r in self.routes.values() for b in r.backends}

    async def _drain(self) -> bool:
        current = self._upstreams()

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

    async def proxy(self, port: int, request: web.BaseRequest) -> web.StreamResponse:
        route = self.routes.get(port)
        backend = route.pick() if route is not None else None
        if route is None or backend is None:
            name = route.service if route else f"port {port}"
            return _plain(503, f"archdeploy front end: {name} has no serving revision\n")
        upstream = backend.upstream
        if is_upgrade(request):  # a stream, not a request in flight: no drain waits on it
            assert self.session is not None
            try:
                return await self.streams.relay(
                    request, self.session, upstream, _forwarded(request), _UPSTREAM_TIMEOUT
                )
            except (ClientError, OSError, TimeoutError) as exc:
                return _unanswered(route, backend.revision, upstream, exc)
        self.in_flight[upstream] += 1
        try:
            return await self._forward(request, upstream)
        except (ClientError, OSError, TimeoutError) as exc:
            return _unanswered(route, backend.revision, upstream, exc)
        finally:
            self.in_flight[upstream] -= 1
            if self.draining:  # a reload waits for old revisions' requests to finish
                async with self.drained:
                    self.drained.notify_all()

    async def _forward(self, request: web.BaseRequest, upstream: str) -> web.StreamResponse:
        """Stream the request to `upstream` and its answer back, chunk by chunk."""
        assert self.session is not None
        headers = _forwarded(request)
        has_body = request.body_exists
        if request.content_length is not None:  # streamed as sent, not re-chunked
            headers["Content-Length"] = str(request.content_length)
        # A body is streamed once; a body-less request may go again on a fresh connection.
        attempts = 2 if request.method in _RETRYABLE_METHODS and not has_body else 1
        for attempt in range(attempts):
            try:
                async with self.session.request(
                    request.method,
                    upstream + request.rel_url.raw_path_qs,
                    headers=headers,
                    data=request.content if has_body else None,
                    allow_redirects=False,
                ) as answer:
                    return await _relay(request, answer)
            except ServerDisconnectedError:
                # A kept-alive connection the revision closed meanwhile: once more, fresh.
                if attempt + 1 >= attempts:
                    raise
        raise AssertionError("unreachable")


async def _relay(request: web.BaseRequest, answer: ClientResponse) -> web.StreamResponse:
    headers = [(k, v) for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP]
    length = answer.content_length
    if length is not None and length <= _SMALL_BODY and request.method != "HEAD":
        # A small answer whose size is known is sent in one write, not streamed.
        body = await answer.read()
        return web.Response(status=answer.status, reason=answer.reason, body=body, headers=headers)
    response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
    if length is not None:
        response.content_length = length
    await response.prepare(request)
    try:
        async for chunk in answer.content.iter_any():
            await response.write(chunk)
    except (ClientError, OSError, TimeoutError):
        # The revision died mid-answer. A 502 cannot follow what was sent, and ending a
        # chunked body cleanly would pass off a truncated answer as whole: cut the
        # connection, as a proxy must, so the client sees the answer broken.
        response.force_close()
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


def _forwarded(request: web.BaseRequest) -> dict[str, str]:
    """The request's end-to-end headers, and where it came from, for the revision."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    headers["X-Forwarded-Host"] = request.host
    headers["X-Forwarded-For"] = request.remote or ""
    return headers


def _unanswered(route: Route, revision: str, upstream: str, exc: BaseException) -> web.Response:
    detail = str(exc) or type(exc).__name__
    return _plain(
        502,
        f"archdeploy front end: service {route.service} ({route.key}):"
        f" its revision {revision} at {upstream} did not answer: {detail}\n",
    )


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
