"""A revision that dies halfway through an answer: the front end cuts the connection, so
the client sees a broken answer, never a truncated one passed off as whole, nor a second
`502` response written into the body."""

from __future__ import annotations

import asyncio
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from shared.adapters.local.frontend import FrontEnd

SIZE = 1 << 20
SENT = 100_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _dies_mid_answer(request: web.Request) -> web.StreamResponse:
    chunked = request.query.get("chunked") == "1"
    headers = {} if chunked else {"Content-Length": str(SIZE)}
    response = web.StreamResponse(status=200, headers=headers)
    if chunked:
        response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b"x" * SENT)
    await response.drain()
    assert request.transport is not None
    request.transport.close()
    return response


async def _fetch_through_front_end(tmp_path: Path, query: str) -> bytes:
    backend_port, front_port = _free_port(), _free_port()
    app = web.Application()
    app.router.add_get("/big", _dies_mid_answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", backend_port).start()
    backends = [{"revision": "r1", "upstream": f"http://127.0.0.1:{backend_port}", "percent": 100}]
    route = {"key": "k", "service": "web", "tag": "", "backends": backends}
    (tmp_path / "routes.json").write_text(json.dumps({"routes": {str(front_port): route}}))
    front = FrontEnd(tmp_path)
    await front.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", front_port)
        writer.write(f"GET /big{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        data = b""
        while chunk := await asyncio.wait_for(reader.read(65536), 30):  # bounded, not timed
            data += chunk
        writer.close()
        return data
    finally:
        await front.close()
        await runner.cleanup()


def _fetch(tmp_path: Path, query: str) -> bytes:
    # A thread of its own: other tests (Playwright's sync API) may leave this thread's
    # event loop running, and asyncio.run() refuses to nest in one.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _fetch_through_front_end(tmp_path, query)).result()


def test_a_revision_dying_mid_answer_closes_the_connection(tmp_path: Path) -> None:
    data = _fetch(tmp_path, "")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {SIZE}".encode() in head
    assert SENT <= len(body) < SIZE  # the connection ended short of the promised length
    assert b"HTTP/1.1 502" not in body


def test_a_chunked_answer_cut_short_is_not_ended_as_if_whole(tmp_path: Path) -> None:
    data = _fetch(tmp_path, "?chunked=1")
    assert data.startswith(b"HTTP/1.1 200")
    assert not data.endswith(b"0\r\n\r\n")  # no last chunk: the client knows it is broken
    assert b"HTTP/1.1 502" not in data
