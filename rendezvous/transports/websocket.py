"""WebSocket transport: carries :class:`ChannelRoute` s over ASGI ``websocket`` scopes.

Lean on purpose: one coroutine per connection (the one the ASGI server already runs), no
extra tasks, no framework request machinery.
"""

from __future__ import annotations

import contextlib
from typing import Any

import anyio

from rendezvous.transports.base import ChannelClosed, ChannelRoute, ConnectionInfo, Route, SendTimeout, header_map
from rendezvous.transports.handlers import run_channel

CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_SEND_TIMEOUT = 1.0
#: WebSocket over HTTP/1.1 (RFC 6455), HTTP/2 (RFC 8441) or HTTP/3 (RFC 9220), as ASGI servers
#: name them; hypercorn hands on an HTTP/1 upgrade with any request-line version ("2.0", "9.9").
WEBSOCKET_HTTP_VERSIONS = frozenset({"1.1", "2", "3"})


def connection_info(scope: dict[str, Any], transport: str) -> ConnectionInfo:
    client = scope.get("client") or (None, None)
    return ConnectionInfo(
        transport=transport,
        path=scope["path"],
        query=scope.get("query_string", b"").decode("latin-1"),
        headers=header_map(scope.get("headers", ())),
        client_host=client[0],
        client_port=client[1],
        subprotocols=tuple(scope.get("subprotocols", ())),
    )


class WebSocketChannel:
    """A :class:`rendezvous.transports.base.Channel` over one ASGI WebSocket connection."""

    __slots__ = ("_accepted", "_can_respond", "_close_code", "_closed", "_max", "_receive", "_recv_scope", "_send", "info")

    def __init__(self, scope: dict[str, Any], receive: Any, send: Any, max_message_size: int) -> None:
        self.info = connection_info(scope, "websocket")
        self._can_respond = "websocket.http.response" in (scope.get("extensions") or {})
        self._receive = receive
        self._send = send
        self._max = max_message_size
        self._accepted = False
        self._closed = False
        self._close_code = 1005
        self._recv_scope: anyio.CancelScope | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def expect(self, kind: str) -> None:
        """A hint only: this transport hands whole messages to the profile, which checks their kind."""

    async def accept(self, subprotocol: str | None = None) -> None:
        message: dict[str, Any] = {"type": "websocket.accept"}
        if subprotocol is not None:
            message["subprotocol"] = subprotocol
        # The ASGI server sends "websocket.connect" first; consume it before accepting.
        event = await self._receive()
        if event["type"] != "websocket.connect":
            self._closed = True
            raise ChannelClosed(1006, "disconnected before accept")
        await self._send(message)
        self._accepted = True

    async def refuse(self, status: int = 403, body: bytes = b"") -> None:
        self._closed = True
        if status != 403 and self._can_respond:
            # The ASGI "WebSocket Denial Response" extension: a real HTTP status before the upgrade.
            await self._send({"type": "websocket.http.response.start", "status": status,
                              "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await self._send({"type": "websocket.http.response.body", "body": body})
            return
        # Closing before accepting makes the server answer the upgrade with an HTTP 403.
        await self._send({"type": "websocket.close", "code": 1000})

    async def receive(self) -> str | bytes:
        if self._closed:
            raise ChannelClosed(self._close_code)
        with anyio.CancelScope() as scope:
            self._recv_scope = scope
            event = await self._receive()
        self._recv_scope = None
        if scope.cancelled_caught or self._closed:
            raise ChannelClosed(self._close_code)
        kind = event["type"]
        if kind == "websocket.receive":
            text = event.get("text")
            data: str | bytes = text if text is not None else (event.get("bytes") or b"")
            # Text length in characters is at most its UTF-8 length; check bytes only when close.
            size = len(data) if isinstance(data, bytes) or len(data) * 4 <= self._max else len(data.encode())
            if size > self._max:
                await self.close(CLOSE_TOO_BIG, "message too big")
                raise ChannelClosed(CLOSE_TOO_BIG, "message too big")
            return data
        self._closed = True
        self._close_code = int(event.get("code", 1005))
        raise ChannelClosed(self._close_code, event.get("reason") or "")

    async def send(self, message: str | bytes, timeout: float | None = None) -> None:
        if self._closed:
            raise ChannelClosed(self._close_code)
        event = {"type": "websocket.send", "text": message} if isinstance(message, str) else {"type": "websocket.send", "bytes": message}
        try:
            if timeout is None:
                await self._send(event)
                return
            with anyio.move_on_after(timeout) as scope:
                await self._send(event)
        except (OSError, RuntimeError) as exc:  # servers differ in what a dead socket raises
            self._closed = True
            raise ChannelClosed(1006, str(exc)) from exc
        if scope.cancelled_caught:
            raise SendTimeout()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        self._close_code = code
        if self._accepted:
            # Bounded: a peer that stopped reading must not hold up whoever closes it.
            with anyio.move_on_after(CLOSE_SEND_TIMEOUT):
                with contextlib.suppress(OSError, RuntimeError):
                    await self._send({"type": "websocket.close", "code": code, "reason": reason})
        if self._recv_scope is not None:
            self._recv_scope.cancel()


class WebSocketTransport:
    """Binds channel routes to ASGI websocket handlers and tracks open channels."""

    name = "websocket"
    scope_type = "websocket"

    def __init__(self) -> None:
        self._open: set[WebSocketChannel] = set()
        self._closing = False

    @property
    def open_channels(self) -> int:
        return len(self._open)

    def bind(self, route: Route) -> Any:
        if not isinstance(route, ChannelRoute):
            return None
        max_size = route.max_message_size
        open_channels = self._open

        async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
            channel = WebSocketChannel(scope, receive, send, max_size)
            if scope.get("http_version", "1.1") not in WEBSOCKET_HTTP_VERSIONS:
                await channel.refuse(505, b"WebSocket needs HTTP/1.1\n")
                return
            if self._closing:
                await channel.refuse(503)
                return
            open_channels.add(channel)
            try:
                await run_channel(route, channel)
            finally:
                open_channels.discard(channel)

        return asgi

    async def shutdown(self, code: int = CLOSE_GOING_AWAY) -> None:
        """Close every open channel with ``code`` (1001, going away) and refuse new ones."""
        self._closing = True
        for channel in list(self._open):
            await channel.close(code, "server shutting down")


transport = WebSocketTransport
