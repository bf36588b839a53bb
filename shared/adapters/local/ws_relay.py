"""The local front end's WebSocket relay: an upgrade request reaches a revision as on
Cloud Run, where "WebSockets applications are supported ... with no additional
configuration" and "WebSockets streams are HTTP requests still subject to the request
timeout configured for your Cloud Run service" (https://cloud.google.com/run/docs/triggering/websockets).

The upgrade goes to the revision the port's traffic split picks, like any request. The
revision's handshake answer decides: a refusal (404, 403, ...) reaches the client as it
is; an accepted one is answered 101 with the subprotocol the revision chose, and messages
are relayed both ways (text, binary, close codes) until either side closes or the
request timeout ends the stream (code 1001, going away).

A stream does not hold a reload's drain: it may last up to the timeout, and a deploy must
not wait for it. When its revision stops serving the port, the stream is closed with code
1012 (service restart), so the client reconnects, as Cloud Run's guidance asks clients to,
and reaches the revision serving now.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiohttp import (
    ClientError,
    ClientSession,
    ClientWebSocketResponse,
    WSCloseCode,
    WSMsgType,
    WSServerHandshakeError,
    web,
)

# Headers the WebSocket client sets itself for its own handshake with the revision.
_HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions"})
_CLOSE = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


def is_upgrade(request: web.BaseRequest) -> bool:
    """Whether `request` asks to become a WebSocket (RFC 6455, section 4.1)."""
    connection = request.headers.get("Connection", "").lower()
    return "upgrade" in connection and request.headers.get("Upgrade", "").lower() == "websocket"


class Streams:
    """The open streams per revision upstream, so a reload can close those it drops."""

    def __init__(self) -> None:
        self._open: dict[str, set[web.WebSocketResponse]] = {}

    async def close_all_but(self, serving: set[str]) -> None:
        """Close, with 1012, every stream whose revision is not in `serving`."""
        gone = [s for up, streams in self._open.items() if up not in serving for s in streams]
        await asyncio.gather(*(s.close(code=WSCloseCode.SERVICE_RESTART) for s in gone))

    async def relay(
        self,
        request: web.BaseRequest,
        session: ClientSession,
        upstream: str,
        headers: Mapping[str, str],
        timeout: float,
    ) -> web.StreamResponse:
        """Open the stream to `upstream`, then relay it; raises `ClientError` or `OSError`
        when the revision cannot be reached (the caller answers 502)."""
        forwarded = {k: v for k, v in headers.items() if k.lower() not in _HANDSHAKE}
        offered = forwarded.pop("Sec-WebSocket-Protocol", "")
        protocols = [p.strip() for p in offered.split(",") if p.strip()]
        url = "ws" + upstream.removeprefix("http") + request.rel_url.raw_path_qs
        try:
            theirs = await session.ws_connect(
                url, headers=forwarded, protocols=protocols, autoping=False
            )
        except WSServerHandshakeError as refused:  # the revision answered, not with 101
            return web.Response(status=refused.status, text=f"{refused.message}\n")
        async with theirs:
            ours = web.WebSocketResponse(
                protocols=[theirs.protocol] if theirs.protocol else (), autoping=False
            )
            await ours.prepare(request)
            self._open.setdefault(upstream, set()).add(ours)
            try:
                await _pump_both(ours, theirs, timeout)
            finally:
                self._open[upstream].discard(ours)
                if not self._open[upstream]:
                    del self._open[upstream]
            return ours


async def _pump_both(
    ours: web.WebSocketResponse, theirs: ClientWebSocketResponse, timeout: float
) -> None:
    """Relay until one side closes or `timeout` passes; then close the other side with the
    code the first gave."""
    up = asyncio.ensure_future(_pump(ours, theirs))
    down = asyncio.ensure_future(_pump(theirs, ours))
    done, pending = await asyncio.wait({up, down}, timeout=timeout, return_when="FIRST_COMPLETED")
    for task in pending:
        task.cancel()
    code = next((t.result() for t in done if not t.exception()), WSCloseCode.GOING_AWAY)
    code = code if _sendable(code) else WSCloseCode.INTERNAL_ERROR
    for side in (ours, theirs):
        if not side.closed:
            await side.close(code=code)


def _sendable(code: int) -> bool:
    """Whether a close frame may carry `code`. 1005, 1006 and 1015 only report what
    happened (a side vanished without a close frame, a TLS failure) and "MUST NOT be set
    as a status code in a Close control frame" (RFC 6455, section 7.4.1); 1004 and
    1016-2999 are reserved, below 1000 unused (section 7.4.2)."""
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


async def _pump(source: Any, sink: Any) -> int:
    """Copy `source`'s messages to `sink` until `source` closes; returns its close code."""
    while True:
        message = await source.receive()
        if message.type in _CLOSE:
            code = source.close_code
            return int(code) if code else int(WSCloseCode.OK)
        try:
            if message.type is WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif message.type is WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            elif message.type is WSMsgType.PING:
                await sink.ping(message.data)
            elif message.type is WSMsgType.PONG:
                await sink.pong(message.data)
        except (ClientError, ConnectionError):
            return int(WSCloseCode.GOING_AWAY)
