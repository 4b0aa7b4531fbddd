"""The native server: HTTP/1.1 and WebSocket on asyncio (uvloop) with httptools, no ASGI.

Why it exists: measured here, an ASGI server's WebSocket machinery costs 1.2–2.1 ms of CPU
per overlay join (two handshakes, six frames), against 0.55 ms for the original node
server (bench/overlay.py). This server resolves routes on the :class:`rendezvous.app.App`
and drives channel and exchange handlers directly; whatever no route claims (static files,
404s) still goes through the App's ASGI face.

WebSocket framing follows RFC 6455: clients must mask (1002 otherwise), fragmented messages
are reassembled, control frames are answered, text must be UTF-8 (1007), messages over the
route's cap close with 1009. HTTP/1.1 keep-alive, one request at a time per connection.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import ssl
import struct
from typing import Any
from urllib.parse import unquote

import anyio
import httptools

from rendezvous.servers import ServeOptions
from rendezvous.transports.base import (
    ChannelClosed,
    ChannelRoute,
    ConnectionInfo,
    ExchangeRoute,
    HttpRequest,
    HttpResponse,
    Inbox,
    SendTimeout,
    header_map,
)

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_REASONS = {
    200: b"OK", 204: b"No Content", 400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 413: b"Payload Too Large", 415: b"Unsupported Media Type", 426: b"Upgrade Required",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    503: b"Service Unavailable", 504: b"Gateway Timeout",
}
_MAX_HEADER_BYTES = 64 * 1024
_PAUSE_AT = 64  # queued messages before a slow reader's socket stops being read


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n or mask == b"\x00\x00\x00\x00":
        return payload
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def _close_frame(code: int, reason: str = "") -> bytes:
    if code in (1005, 1006, 1015):
        return _frame(0x8, b"")
    return _frame(0x8, struct.pack("!H", code) + reason.encode()[:123])


class NativeChannel:
    """A :class:`rendezvous.transports.base.Channel` over one native WebSocket connection."""

    __slots__ = ("info", "_conn", "_inbox", "_accepted", "_max")

    def __init__(self, conn: "Connection", info: ConnectionInfo, max_message_size: int) -> None:
        self.info = info
        self._conn = conn
        self._inbox = Inbox()
        self._accepted = False
        self._max = max_message_size

    @property
    def closed(self) -> bool:
        return self._inbox.closed

    async def accept(self, subprotocol: str | None = None) -> None:
        if self._inbox.closed:
            raise ChannelClosed(1006, "disconnected before accept")
        self._accepted = True
        self._conn.accept_websocket(subprotocol)

    async def refuse(self, status: int = 403, body: bytes = b"") -> None:
        self._inbox.close(1005)
        self._conn.refuse_websocket(status, body)

    async def receive(self) -> str | bytes:
        message = await self._inbox.get()
        if len(self._inbox.messages) < _PAUSE_AT // 2:
            self._conn.resume_if_paused()
        return message

    async def send(self, message: str | bytes, timeout: float | None = None) -> None:
        self._inbox.raise_if_closed()
        if isinstance(message, str):
            self._conn.write(_frame(0x1, message.encode()))
        else:
            self._conn.write(_frame(0x2, message))
        if self._conn.write_paused:  # only a peer that is not reading costs a wait
            if timeout is None:
                await self._conn.drained()
                return
            with anyio.move_on_after(timeout) as scope:
                await self._conn.drained()
            if scope.cancelled_caught:
                raise SendTimeout()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._inbox.closed:
            return
        self._inbox.close(code, reason)
        if self._accepted:
            self._conn.close_websocket(code, reason)

    # -- called by the connection ---------------------------------------------------------
    def _deliver(self, message: str | bytes) -> None:
        self._inbox.put(message)
        if len(self._inbox.messages) >= _PAUSE_AT:
            self._conn.pause()

    def _mark_closed(self, code: int, reason: str = "") -> None:
        self._inbox.close(code, reason)


class _Server:
    """State shared by the connections of one running native server."""

    def __init__(self, app: Any, options: ServeOptions) -> None:
        self.app = app
        self.options = options
        self.connections: set[Connection] = set()
        self.closing = False
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


class _Request:
    """One parsed HTTP request, snapshotted so pipelined requests don't overwrite each other."""

    __slots__ = ("method", "url", "headers", "body", "keep_alive", "too_large")

    def __init__(self, method: str, url: bytes, headers: list[tuple[bytes, bytes]], body: bytes, keep_alive: bool, too_large: bool) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.too_large = too_large


def _split_url(url: bytes) -> tuple[str, str]:
    path, _, query = url.decode("latin-1").partition("?")
    return (unquote(path) if "%" in path else path), query


class Connection(asyncio.Protocol):
    """One TCP connection: HTTP/1.1 until an upgrade, then WebSocket frames."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.body_size = 0
        self.body_limit = 0
        self.too_large = False
        self.requests: collections.deque[_Request] = collections.deque()
        self.task: asyncio.Task[Any] | None = None
        self.websocket: NativeChannel | None = None
        self.ws_buffer = bytearray()
        self.ws_fragments: list[bytes] = []
        self.ws_fragment_opcode = 0
        self.ws_fragment_size = 0
        self.ws_pending_upgrade: bytes | None = None  # Sec-WebSocket-Key until accepted
        self.websocket_candidate: NativeChannel | None = None
        self.paused = False
        self.write_paused = False
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.client: tuple[str | None, int | None] = (None, None)
        self.keepalive: asyncio.TimerHandle | None = None
        self.lost = False
        self.out: list[bytes] | None = None  # written this step, not yet handed to the transport

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.client = (peer[0], peer[1])
        self.server.connections.add(self)
        self._arm_keepalive()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        if self.keepalive is not None:
            self.keepalive.cancel()
        if self.websocket is not None:
            self.websocket._mark_closed(1006, "connection lost")
        elif self.task is not None and not self.task.done():
            self.task.cancel()  # a client gone mid long-poll cancels the handler
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.drain_waiters.clear()

    async def drained(self) -> None:
        if self.write_paused and not self.lost:
            waiter = asyncio.get_running_loop().create_future()
            self.drain_waiters.append(waiter)
            await waiter

    def data_received(self, data: bytes) -> None:
        if self.websocket is not None:
            self._ws_data(data)
            return
        if self.ws_pending_upgrade is not None:
            self.ws_buffer += data  # frames sent before the handshake completes
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0]
            self.ws_buffer += data[offset:]
            if self.task is not None:
                self._respond_and_close(400, b"upgrade pipelined behind another request\n")
            else:
                self._upgrade_requested()
        except httptools.HttpParserError:
            self._respond_and_close(400, b"bad request\n")

    # -- httptools callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.header_bytes = 0
        self.body = []
        self.body_size = 0
        self.too_large = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > _MAX_HEADER_BYTES:
            raise httptools.HttpParserError("headers too large")
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        route = self._exchange_route(self.url)
        self.body_limit = route.max_body_size if route is not None else 1024 * 1024

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.body_limit:
            self.too_large = True
        elif not self.too_large:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade():
            return  # handled by the HttpParserUpgrade path
        self.requests.append(_Request(
            self.parser.get_method().decode("latin-1"), self.url, self.headers, b"".join(self.body),
            self.parser.should_keep_alive(), self.too_large,
        ))
        if len(self.requests) >= 8:
            self.pause()  # a client pipelining far ahead waits for its answers
        if self.task is None:
            self.task = self.server.spawn(self._handle_http())

    # -- helpers ----------------------------------------------------------------------------
    def _arm_keepalive(self) -> None:
        if self.keepalive is not None:
            self.keepalive.cancel()
        self.keepalive = asyncio.get_running_loop().call_later(self.server.options.keep_alive, self._idle_timeout)

    def _idle_timeout(self) -> None:
        if self.websocket is None and self.task is None and self.transport is not None:
            self.close_transport()

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.lost:
            self.paused = True
            self.transport.pause_reading()

    def resume_if_paused(self) -> None:
        if self.paused and self.transport is not None and not self.lost:
            self.paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        """Queue ``data``; everything written in one event-loop step leaves in one send.

        (Routing three signals to one peer in a step costs one syscall instead of three.)"""
        if self.transport is not None and not self.lost:
            if self.out is None:
                self.out = [data]
                asyncio.get_running_loop().call_soon(self.flush)
            else:
                self.out.append(data)

    def flush(self) -> None:
        out, self.out = self.out, None
        if out and self.transport is not None and not self.lost:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close_transport(self) -> None:
        """Close after whatever is queued has been handed to the transport."""
        if self.transport is not None:
            self.flush()
            self.transport.close()

    def _exchange_route(self, url: bytes) -> ExchangeRoute | None:
        route = self.server.app.resolve("exchange", _split_url(url)[0])
        return route if isinstance(route, ExchangeRoute) else None

    def _respond(self, status: int, body: bytes, headers: Any = (), keep_alive: bool = True) -> None:
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
        for name, value in headers:
            lines.append(name.encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n")
        lines.append(b"content-length: %d\r\n" % len(body))
        if not keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        self.write(b"".join(lines) + body)

    def _respond_and_close(self, status: int, body: bytes) -> None:
        self._respond(status, body, (("content-type", "text/plain; charset=utf-8"),), keep_alive=False)
        self.close_transport()

    # -- HTTP -------------------------------------------------------------------------------
    async def _handle_http(self) -> None:
        """Answer queued requests in order (HTTP/1.1 pipelining), then go back to reading."""
        while self.requests and not self.lost:
            request = self.requests.popleft()
            keep_alive = await self._answer(request) and not self.server.closing
            if not keep_alive:
                self.requests.clear()
                self.close_transport()
                break
            self.resume_if_paused()
        self.task = None
        if not self.lost:
            self._arm_keepalive()

    async def _answer(self, req: _Request) -> bool:
        path, query = _split_url(req.url)
        method = req.method
        keep_alive = req.keep_alive
        route = self._exchange_route(req.url)
        try:
            if route is None:
                status, headers, body = await self._asgi_fallback(req, path, query)
            elif (refused := route.refusal(method)) is not None:
                status, headers, body = refused.status, refused.headers, refused.body
            elif req.too_large:
                status, headers, body = route.too_large_status, (), b""
            else:
                request = HttpRequest(method, path, query, header_map(req.headers), req.body, self.client[0])
                response: HttpResponse = await route.handler(request)
                status, headers, body = response.status, response.headers, response.body
            if method == "HEAD":
                body = b""
        except asyncio.CancelledError:
            return False
        except Exception:
            status, headers, body, keep_alive = 500, (), b"internal server error\n", False
        self._respond(status, body, headers, keep_alive)
        return keep_alive

    async def _asgi_fallback(self, req: _Request, path: str, query: str) -> tuple[int, Any, bytes]:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": req.method,
            "scheme": "https" if self.server.options.certfile else "http", "path": path,
            "raw_path": req.url.partition(b"?")[0], "query_string": query.encode("latin-1"), "root_path": "",
            "headers": req.headers, "client": self.client, "server": None,
        }
        body = req.body
        sent = False
        result: dict[str, Any] = {"status": 500, "headers": [], "body": []}

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.get_running_loop().create_future()  # until cancelled
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                result["status"] = message["status"]
                result["headers"] = [
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in message.get("headers", ())
                    if k.lower() not in (b"content-length", b"transfer-encoding", b"connection")
                ]
            elif message["type"] == "http.response.body":
                result["body"].append(message.get("body", b""))

        await self.server.app.fallback(scope, receive, send)
        return result["status"], result["headers"], b"".join(result["body"])

    # -- WebSocket --------------------------------------------------------------------------
    def _upgrade_requested(self) -> None:
        path, query = _split_url(self.url)
        headers = header_map(self.headers)
        route = self.server.app.resolve("channel", path)
        method = self.parser.get_method()
        if (
            method != b"GET"
            or headers.get("upgrade", "").lower() != "websocket"
            or headers.get("sec-websocket-version") != "13"
            or not headers.get("sec-websocket-key")
        ):
            self._respond_and_close(400, b"bad websocket upgrade\n")
            return
        if route is None or not isinstance(route, ChannelRoute) or self.server.closing:
            self._respond_and_close(403 if not self.server.closing else 503, b"")
            return
        offered = headers.get("sec-websocket-protocol")
        subprotocols = tuple(p.strip() for p in offered.split(",") if p.strip()) if offered else ()
        info = ConnectionInfo("websocket", path, query, headers, self.client[0], self.client[1], subprotocols)
        self.ws_pending_upgrade = headers["sec-websocket-key"].encode("latin-1")
        channel = NativeChannel(self, info, route.max_message_size)
        self.websocket_candidate = channel
        self.pause()
        self.task = self.server.spawn(self._run_channel(route, channel))

    def accept_websocket(self, subprotocol: str | None) -> None:
        key = self.ws_pending_upgrade or b""
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        extra = b"Sec-WebSocket-Protocol: " + subprotocol.encode("latin-1") + b"\r\n" if subprotocol else b""
        self.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n" + extra + b"\r\n"
        )
        self.ws_pending_upgrade = None
        self.websocket = self.websocket_candidate
        if self.keepalive is not None:
            self.keepalive.cancel()
        pending = bytes(self.ws_buffer)
        self.ws_buffer.clear()
        self.resume_if_paused()
        if pending:
            self._ws_data(pending)

    def refuse_websocket(self, status: int, body: bytes = b"") -> None:
        self.ws_pending_upgrade = None
        self._respond_and_close(status, body)

    def close_websocket(self, code: int, reason: str) -> None:
        self.write(_close_frame(code, reason))
        self.close_transport()

    async def _run_channel(self, route: ChannelRoute, channel: NativeChannel) -> None:
        try:
            await route.handler(channel)
        except ChannelClosed:
            pass
        except Exception:
            await channel.close(1011, "internal error")
            raise
        finally:
            if self.ws_pending_upgrade is not None:
                self.refuse_websocket(403)  # the handler returned without accepting
            await channel.close(1000)

    def _ws_fail(self, code: int, reason: str) -> None:
        channel = self.websocket
        if channel is not None:
            channel._mark_closed(code, reason)
        self.close_websocket(code, reason)

    def _ws_data(self, data: bytes) -> None:
        buf = self.ws_buffer
        buf += data
        channel = self.websocket
        limit = channel._max
        pos = 0
        end = len(buf)
        while end - pos >= 2 and not channel.closed:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if b0 & 0x70:
                return self._ws_fail(1002, "reserved bits set")
            if not b1 & 0x80:
                return self._ws_fail(1002, "client frames must be masked")
            if opcode >= 0x8 and (length > 125 or not b0 & 0x80):
                return self._ws_fail(1002, "bad control frame")
            if opcode < 0x8 and length + self.ws_fragment_size > limit:
                return self._ws_fail(1009, "message too big")
            if end - pos < head + 4 + length:
                break
            mask = bytes(buf[pos + head : pos + head + 4])
            start = pos + head + 4
            payload = _unmask(bytes(buf[start : start + length]), mask)
            pos = start + length
            fin = b0 & 0x80
            if opcode == 0x1 or opcode == 0x2:
                if self.ws_fragments:
                    return self._ws_fail(1002, "expected a continuation frame")
                if fin:
                    self._ws_message(opcode, payload)
                else:
                    self.ws_fragment_opcode = opcode
                    self.ws_fragments = [payload]
                    self.ws_fragment_size = length
            elif opcode == 0x0:
                if not self.ws_fragments:
                    return self._ws_fail(1002, "unexpected continuation frame")
                self.ws_fragments.append(payload)
                self.ws_fragment_size += length
                if fin:
                    message = b"".join(self.ws_fragments)
                    self.ws_fragments = []
                    self.ws_fragment_size = 0
                    self._ws_message(self.ws_fragment_opcode, message)
            elif opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                reason = payload[2:].decode("utf-8", "replace")
                channel._mark_closed(code, reason)
                self.close_websocket(code if code not in (1005, 1006) else 1000, "")
                break
            elif opcode == 0x9:
                self.write(_frame(0xA, payload))
            elif opcode == 0xA:
                pass
            else:
                return self._ws_fail(1002, "unknown opcode")
        del buf[:pos]

    def _ws_message(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x1:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                return self._ws_fail(1007, "invalid UTF-8")
            self.websocket._deliver(text)
        else:
            self.websocket._deliver(payload)


class NativeServer:
    name = "native"
    wants_uvloop = True

    async def serve(self, app: Any, sockets: list[Any], options: ServeOptions, shutdown: anyio.Event) -> None:
        loop = asyncio.get_running_loop()
        state = _Server(app, options)
        context = None
        if options.certfile is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(options.certfile), str(options.keyfile))
        servers = [
            await loop.create_server(lambda: Connection(state), sock=sock.dup(), ssl=context, backlog=4096)
            for sock in sockets
        ]
        try:
            await shutdown.wait()
        finally:
            state.closing = True
            for server in servers:
                server.close()
            for conn in list(state.connections):
                if conn.websocket is not None and not conn.websocket.closed:
                    await conn.websocket.close(1001, "server shutting down")
                elif conn.task is None and conn.transport is not None:
                    conn.close_transport()  # idle keep-alive connection
            with anyio.move_on_after(options.grace):
                while state.tasks:
                    await asyncio.sleep(0.05)
            for task in list(state.tasks):
                task.cancel()
            for conn in list(state.connections):
                conn.close_transport()


server = NativeServer()
