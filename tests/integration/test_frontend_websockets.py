"""WebSockets through the local front end's stable port, as Cloud Run serves them: the
revision's handshake answer decides, messages and close codes pass both ways, the request
timeout ends a stream, and a stream whose revision stops serving is closed with 1012 so
the client reconnects to the one serving now (shared/adapters/local/ws_relay.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType, web

from shared.adapters.local import frontend
from shared.adapters.local.frontend import FrontEnd
from shared.adapters.local.processes import kept_port

WAIT = 30.0  # seconds: any one step here, far beyond what it takes


class Revision:
    """A revision's server: echoes with its name, records what it saw."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = kept_port()
        self.upstream = f"http://127.0.0.1:{self.port}"
        self.seen: dict[str, Any] = {}
        self.closed_with: asyncio.Future[int | None] | None = None

    async def echo(self, request: web.Request) -> web.WebSocketResponse:
        self.seen["forwarded_host"] = request.headers.get("X-Forwarded-Host")
        self.closed_with = asyncio.get_running_loop().create_future()
        ws = web.WebSocketResponse(protocols=["chat.v1"])
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT and message.data == "bye":
                await ws.close(code=4001, message=b"bye")
            elif message.type is WSMsgType.TEXT:
                await ws.send_str(f"{self.name}:{message.data}")
            elif message.type is WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        self.closed_with.set_result(ws.close_code)
        return ws

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[Revision]:
        app = web.Application()
        app.router.add_get("/chat", self.echo)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        try:
            yield self
        finally:
            await runner.cleanup()


def _route(folder: Path, port: int, upstream: str, revision: str) -> None:
    backends = [{"revision": revision, "upstream": upstream, "percent": 100}]
    route = {"key": "k", "service": "chat", "tag": "", "backends": backends}
    (folder / "routes.json").write_text(json.dumps({"routes": {str(port): route}}))


def _run(scenario: Callable[[Path], Awaitable[None]], folder: Path) -> None:
    # A thread of its own: Playwright's sync API may leave this thread's loop running.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, asyncio.wait_for(scenario(folder), 4 * WAIT)).result()


@asynccontextmanager
async def _front(folder: Path, upstream: str) -> AsyncIterator[tuple[FrontEnd, str]]:
    port = kept_port()
    _route(folder, port, upstream, "r1")
    front = FrontEnd(folder)
    await front.start()
    try:
        yield front, f"http://127.0.0.1:{port}"
    finally:
        await front.close()


async def _messages_and_close_codes_pass_both_ways(folder: Path) -> None:
    async with (
        Revision("r1").serving() as r1,
        _front(folder, r1.upstream) as (_, url),
        aiohttp.ClientSession() as client,
    ):
        async with client.ws_connect(f"{url}/chat", protocols=["chat.v1", "x"]) as ws:
            assert ws.protocol == "chat.v1"
            await ws.send_str("hello")
            assert (await ws.receive(WAIT)).data == "r1:hello"
            await ws.send_bytes(b"abc")
            assert (await ws.receive(WAIT)).data == b"cba"
            await ws.send_str("bye")
            closing = await ws.receive(WAIT)
            assert closing.type is WSMsgType.CLOSE and closing.data == 4001
        assert r1.seen["forwarded_host"] == url.removeprefix("http://")

        async with client.ws_connect(f"{url}/chat") as ws:
            await ws.send_str("x")
            await ws.receive(WAIT)
            await ws.close(code=4002)
        assert r1.closed_with is not None
        assert await asyncio.wait_for(r1.closed_with, WAIT) == 4002


def test_messages_and_close_codes_pass_both_ways(tmp_path: Path) -> None:
    _run(_messages_and_close_codes_pass_both_ways, tmp_path)


async def _refusals_and_unreachable_revisions(folder: Path) -> None:
    async with (
        Revision("r1").serving() as r1,
        _front(folder, r1.upstream) as (_, url),
        aiohttp.ClientSession() as client,
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(f"{url}/nowhere")
        assert refused.value.status == 404, "the revision's own answer"
    async with (
        _front(folder, "http://127.0.0.1:9") as (_, url),  # nothing listens on port 9
        aiohttp.ClientSession() as client,
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as broken:
            await client.ws_connect(f"{url}/chat")
        assert broken.value.status == 502


def test_a_refusal_reaches_the_client_and_an_unreachable_revision_is_a_502(
    tmp_path: Path,
) -> None:
    _run(_refusals_and_unreachable_revisions, tmp_path)


async def _a_new_revision_closes_old_streams_with_1012(folder: Path) -> None:
    async with (
        Revision("r1").serving() as r1,
        Revision("r2").serving() as r2,
        _front(folder, r1.upstream) as (front, url),
        aiohttp.ClientSession() as client,
    ):
        async with client.ws_connect(f"{url}/chat") as ws:
            await ws.send_str("a")
            assert (await ws.receive(WAIT)).data == "r1:a"
            port = int(url.rsplit(":", 1)[1])
            _route(folder, port, r2.upstream, "r2")
            answer = await front.reload()
            closing = await ws.receive(WAIT)
            assert closing.type is WSMsgType.CLOSE
            assert closing.data == WSCloseCode.SERVICE_RESTART
        assert answer["drained"] is True, "an open stream does not hold the drain"
        async with client.ws_connect(f"{url}/chat") as ws:
            await ws.send_str("b")
            assert (await ws.receive(WAIT)).data == "r2:b"


def test_a_stream_whose_revision_stops_serving_is_closed_with_1012(tmp_path: Path) -> None:
    _run(_a_new_revision_closes_old_streams_with_1012, tmp_path)


async def _the_request_timeout_ends_a_stream(folder: Path) -> None:
    async with (
        Revision("r1").serving() as r1,
        _front(folder, r1.upstream) as (_, url),
        aiohttp.ClientSession() as client,
        client.ws_connect(f"{url}/chat") as ws,
    ):
        closing = await ws.receive(WAIT)
        assert closing.type is WSMsgType.CLOSE
        assert closing.data == WSCloseCode.GOING_AWAY
    assert r1.closed_with is not None
    assert await asyncio.wait_for(r1.closed_with, WAIT) == WSCloseCode.GOING_AWAY


def test_the_request_timeout_ends_a_stream_on_both_sides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(frontend, "_UPSTREAM_TIMEOUT", 0.5)
    _run(_the_request_timeout_ends_a_stream, tmp_path)


async def _a_revision_that_vanishes_is_reported_with_a_code_a_frame_may_carry(
    folder: Path,
) -> None:
    async def vanish(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        assert request.transport is not None
        request.transport.abort()  # gone without a close frame: aiohttp says 1006
        return ws

    port = kept_port()
    app = web.Application()
    app.router.add_get("/chat", vanish)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    try:
        async with (
            _front(folder, f"http://127.0.0.1:{port}") as (_, url),
            aiohttp.ClientSession() as client,
            client.ws_connect(f"{url}/chat") as ws,
        ):
            await ws.send_str("x")
            closing = await ws.receive(WAIT)
            assert closing.type is WSMsgType.CLOSE
            # 1006 only reports an abnormal end and must never be sent (RFC 6455, 7.4.1).
            assert closing.data == WSCloseCode.INTERNAL_ERROR
    finally:
        await runner.cleanup()


def test_a_revision_that_vanishes_is_reported_with_a_code_a_frame_may_carry(
    tmp_path: Path,
) -> None:
    _run(_a_revision_that_vanishes_is_reported_with_a_code_a_frame_may_carry, tmp_path)
