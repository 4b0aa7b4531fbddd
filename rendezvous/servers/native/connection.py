"""One TCP connection of the native server: HTTP/1.1 (httptools) until an upgrade, then
WebSocket frames (:mod:`rendezvous.servers.native.websocket`).

What a hostile peer cannot do here: send an unbounded request line (414) or header block
(431), trickle its headers forever (408 after :data:`HEAD_TIMEOUT`), make us buffer output it
does not read (reading stops while our output is above the transport's high-water mark, and
the connection is aborted if it stays there for :data:`STALL_TIMEOUT`), or pipeline requests
without bound (reading stops at :data:`PIPELINE` queued requests).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httptools

from rendezvous.servers.native.asgi import asgi_fallback
from rendezvous.servers.native.channel import NativeChannel
from rendezvous.servers.native.websocket import Close, FrameReader, Ping, ProtocolError, close_frame, pong_frame
from rendezvous.transports.base import (
    ChannelRoute,
    ConnectionInfo,
    ExchangeRoute,
    Forget,
    HttpRequest,
    HttpResponse,
    header_map,
)
from rendezvous.transports.handlers import run_channel, run_exchange, run_exchange_now

if TYPE_CHECKING:
    from rendezvous.servers.native import ServerState

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
MAX_URL = 8 * 1024  # request target, as nginx's default large_client_header_buffers
MAX_HEAD = 64 * 1024  # request line and headers together
HEAD_TIMEOUT = 10.0  # seconds to send a request's line and headers once begun, and at most between reads of a body
STALL_TIMEOUT = 30.0  # seconds a peer may leave our output unread before it is dropped
PIPELINE = 8  # requests queued before reading stops
FALLBACK_BODY_LIMIT = 1024 * 1024

# Why reading is paused (reading resumes when no reason is left).
_QUEUED, _INBOX, _OUTPUT, _UPGRADE = 1, 2, 4, 8


def status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status


_BLOCKS: dict[Any, bytes] = {}
_HEADS: dict[Any, bytes] = {}  # (status, headers) -> the status line and header block


def header_block(headers: Sequence[tuple[str, str]]) -> bytes:
    """``headers`` as written on the wire; a route's constant header tuples are encoded once."""
    try:
        block = _BLOCKS.get(headers)
    except TypeError:  # (a list: not hashable)
        block = None
    if block is None:
        block = b"".join(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers)
        if type(headers) is tuple and len(_BLOCKS) < 1024:
            _BLOCKS[headers] = block
    return block


def split_url(url: bytes) -> tuple[str, str]:
    path, _, query = url.decode("latin-1").partition("?")
    return (unquote(path) if "%" in path else path), query


class _Immediate:
    """A request whose route answers it without a task, while it waits: stands in for the
    handler's task (``done``/``cancel``) and is the handler's ``respond``."""

    __slots__ = ("connection", "finished", "forget", "request")

    def __init__(self, connection: Connection, request: _Request) -> None:
        self.connection = connection
        self.request = request
        self.finished = False
        self.forget: Forget | None = None

    def __call__(self, response: HttpResponse) -> None:
        if not self.finished:
            self.finished = True
            self.forget = None
            self.connection._finish(self.request, response)

    def done(self) -> bool:
        return self.finished

    def cancel(self) -> bool:
        """The client left (or the server stops): the handler forgets the request, and the
        connection closes (as a cancelled handler's task does)."""
        if self.finished:
            return False
        self.finished = True
        forget, self.forget = self.forget, None
        connection = self.connection
        connection.task = None
        connection.requests.clear()
        try:
            if forget is not None:
                forget()
        finally:
            connection.close_transport()
        return True


class _Reject(Exception):
    """The request head broke a limit; answer ``status`` and close."""

    def __init__(self, status: int) -> None:
        self.status = status


class _Request:
    """One parsed HTTP request, snapshotted so pipelined requests don't overwrite each other."""

    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query", "route", "too_large", "url")

    def __init__(
        self, method: str, url: bytes, path: str, query: str, route: ExchangeRoute | None,
        headers: list[tuple[bytes, bytes]], body: bytes, keep_alive: bool, too_large: bool,
    ) -> None:
        self.method = method
        self.url = url
        self.path = path
        self.query = query
        self.route = route
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.too_large = too_large


_METHODS: dict[bytes, str] = {}


def _method(raw: bytes) -> str:
    method = _METHODS.get(raw)
    if method is None:
        method = _METHODS[raw] = raw.decode("latin-1")
    return method


class Connection(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and pipelining (answered in order), then WebSocket."""

    # Defaults on the class: a connection (one per accepted socket, thousands of long-polls)
    # sets only what differs from them, and only when it does.
    transport: asyncio.Transport | None = None
    client: tuple[str | None, int | None] = (None, None)
    lost = False
    # the request being parsed
    url = b""
    path = ""
    query = ""
    route: ExchangeRoute | None = None
    reading_head = False
    reading_body = False
    eof = False  # the client half-closed: answer what it asked, then close
    head_bytes = 0
    requests_begun = 0
    body_size = 0
    body_limit = 0
    too_large = False
    #: the request in progress: its handler's task, or an :class:`_Immediate` waiting
    task: asyncio.Task[Any] | _Immediate | None = None
    serving = False  # in _serve_next (an immediate answer continues the queue there)
    # WebSocket
    websocket: NativeChannel | None = None
    reader: FrameReader | None = None
    pending_key: bytes | None = None  # Sec-WebSocket-Key until the handler accepts
    candidate: NativeChannel | None = None
    early = b""  # frames sent before the handshake completed
    # flow control
    read_pauses = 0
    write_paused = False
    # One deadline at a time (keep-alive or head), looked at by the server's sweep (no timer
    # per connection: a connection arms and disarms one with every request).
    deadline: float | None = None
    on_deadline: Any = None
    stall: asyncio.TimerHandle | None = None
    out: list[bytes] | None = None  # written this step, not yet handed to the transport

    def __init__(self, server: ServerState) -> None:
        self.server = server
        self.parser: Any = httptools.HttpRequestParser(self)  # (None once released)
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        # requests parsed, waiting for their answers (in order)
        self.requests: collections.deque[_Request] = collections.deque()
        self.drain_waiters: list[asyncio.Future[None]] = []

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.client = (peer[0], peer[1])
        self.server.connections.add(self)
        self._arm(self.server.options.keep_alive, Connection._idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        self.server.deadlines.discard(self)
        if self.stall is not None:
            self.stall.cancel()
        if self.websocket is not None:
            self.websocket.mark_closed(1006, "connection lost")
        elif self.task is not None and not self.task.done():
            self.task.cancel()  # a client gone mid long-poll cancels the handler
        self._wake_drain_waiters()
        if self.task is None or self.task.done():
            self._release()
        # else the handler's task releases it when it ends (_handler_done)

    def _release(self) -> None:
        """Gone, and no handler runs: let go of what refers back to this connection (the parser's
        callbacks, the transport, the channel, the finished task and its traceback), so that
        reference counting frees it now: one connection per join or poll otherwise waits,
        with all it holds, for the cycle collector."""
        self.parser = None
        self.transport = None
        self.task = None
        self.websocket = self.candidate = None
        self.reader = None
        self.on_deadline = None
        self.requests.clear()

    def _handler_done(self, task: asyncio.Task[Any]) -> None:
        if self.lost and (self.task is None or self.task is task):
            self._release()

    def pause_writing(self) -> None:
        """Our output to this peer is above the high-water mark: read nothing more from it
        until it reads, and drop it if it never does."""
        self.write_paused = True
        self.pause(_OUTPUT)
        if self.stall is None:
            self.stall = self.server.loop.call_later(STALL_TIMEOUT, self._stalled)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None
        self.resume(_OUTPUT)
        self._wake_drain_waiters()

    def data_received(self, data: bytes) -> None:
        if self.reader is not None:
            self._websocket_data(data)
            return
        if self.pending_key is not None:
            self.early += data  # reading is paused until the handler decides: at most a read's worth
            return
        was_reading_head = self.reading_head
        begun = self.requests_begun
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.early += data[upgrade.args[0] :]
            if self.task is not None:
                self._respond_and_close(400, b"upgrade pipelined behind another request\n")
            else:
                self._upgrade_requested()
            return
        except httptools.HttpParserError as error:
            # A callback's exception (a head over a limit: _Reject) arrives wrapped by httptools.
            cause = error.__context__
            self._respond_and_close(cause.status if isinstance(cause, _Reject) else 400, b"bad request\n")
            return
        if self.reading_head:
            if was_reading_head and begun == self.requests_begun:
                # The head did not end in this chunk. (A chunk in which a head begins is not
                # counted: it may hold the tail of the previous request's body; so the bound
                # is MAX_HEAD plus one read.)
                self.head_bytes += len(data)
                if self.head_bytes > MAX_HEAD:
                    self._respond_and_close(414 if not self.headers and self.url else 431, b"")
                    return
            else:  # a head began and did not end here: it has HEAD_TIMEOUT to
                self._arm(HEAD_TIMEOUT, Connection._head_timeout)
        elif self.reading_body:  # a body is arriving: each read may be at most HEAD_TIMEOUT apart
            self._arm(HEAD_TIMEOUT, Connection._head_timeout)

    def eof_received(self) -> bool | None:
        """The client closed its side. As Go's server: what is answered at once still gets its
        answer (half-closing clients), a handler still waiting (a long-poll) is cancelled: the
        client is gone (a closing client looks the same until a write fails)."""
        self.flush()  # what this loop step wrote must not be lost with the close
        if self.websocket is None and (self.task is not None or self.requests):
            self.eof = True
            self.server.loop.call_soon(self._cancel_waiting_handler)
            return True  # keep the write side open for the answers
        return None

    def _cancel_waiting_handler(self) -> None:
        # The handler's first step ran before this (scheduled earlier): still running means waiting.
        if self.task is not None and not self.task.done():
            self.requests.clear()
            self.task.cancel()

    # -- httptools callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.reading_head = True
        self.head_bytes = 0
        self.body = []
        self.body_size = 0
        self.too_large = False
        self.requests_begun += 1

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > MAX_URL:
            raise _Reject(414)
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self.head_bytes > MAX_HEAD:
            raise _Reject(431)
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.reading_head = False
        self.reading_body = True
        self.deadline = None  # (disarmed)
        target = self.server.targets.get(self.url)
        if target is None:
            target = self._target(self.url)
        self.path, self.query, self.route, self.body_limit = target

    def _target(self, url: bytes) -> tuple[str, str, ExchangeRoute | None, int]:
        """What a request target means here (path, query, exchange route, body limit); the few
        targets a broker sees over and over are worked out once."""
        path, query = split_url(url)
        route = self.server.app.resolve("exchange", path)
        exchange = route if isinstance(route, ExchangeRoute) else None
        target = (path, query, exchange, exchange.max_body_size if exchange is not None else FALLBACK_BODY_LIMIT)
        targets = self.server.targets
        if len(url) <= 256 and len(targets) < 1024:
            targets[url] = target
        return target

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.body_limit:
            self.too_large = True
        elif not self.too_large:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.reading_body = False
        if self.parser.should_upgrade():
            return  # handled by the HttpParserUpgrade path
        body = self.body
        self.requests.append(_Request(
            _method(self.parser.get_method()), self.url, self.path, self.query, self.route, self.headers,
            body[0] if len(body) == 1 else b"".join(body), self.parser.should_keep_alive(), self.too_large,
        ))
        if len(self.requests) >= PIPELINE:
            self.pause(_QUEUED)  # a client pipelining far ahead waits for its answers
        if self.task is None:
            self._serve_next()

    # -- timers and flow control ------------------------------------------------------------
    def _arm(self, delay: float, callback: Callable[[Connection], None]) -> None:
        """Call ``callback(self)`` (a function, not a bound method: no cycle through the
        connection) in ``delay`` seconds (at most the server's sweep interval later)
        unless re-armed or disarmed first."""
        server = self.server
        self.deadline = server.loop.time() + delay
        self.on_deadline = callback
        server.watch(self)

    def _disarm(self) -> None:
        self.deadline = None

    def deadline_passed(self) -> None:
        """Called by the server's sweep once ``deadline`` has passed."""
        self.deadline = None
        if not self.lost:
            self.on_deadline(self)

    def _idle_timeout(self) -> None:
        if self.websocket is None and self.task is None and self.transport is not None:
            self.close_transport()

    def _head_timeout(self) -> None:
        """A head or body that stopped arriving (slow-loris): 408 and close."""
        if (self.reading_head or self.reading_body) and self.transport is not None and not self.lost:
            self._respond_and_close(408, b"")

    def _stalled(self) -> None:
        self.stall = None
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def pause(self, reason: int) -> None:
        if not self.read_pauses and self.transport is not None and not self.lost:
            self.transport.pause_reading()
        self.read_pauses |= reason

    def resume(self, reason: int) -> None:
        if self.read_pauses & reason:
            self.read_pauses &= ~reason
            if not self.read_pauses and self.transport is not None and not self.lost:
                self.transport.resume_reading()

    def inbox_drained(self) -> None:
        self.resume(_INBOX)

    async def drained(self) -> None:
        if self.write_paused and not self.lost:
            waiter = self.server.loop.create_future()
            self.drain_waiters.append(waiter)
            await waiter

    def _wake_drain_waiters(self) -> None:
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.drain_waiters.clear()

    # -- output -----------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue ``data``; everything written in one event-loop step leaves in one send.

        (Routing three signals to one peer in a step costs one syscall instead of three.)"""
        if self.transport is not None and not self.lost:
            if self.out is None:
                self.out = [data]
                self.server.loop.call_soon(self.flush)
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

    def respond(self, status: int, body: bytes, headers: Sequence[tuple[str, str]] = (), keep_alive: bool = True) -> None:
        """Write one response. Header values were checked by the exchange runner (or come
        from the ASGI app), so they hold no CR/LF and encode as Latin-1."""
        try:
            head = _HEADS.get((status, headers))
        except TypeError:  # (headers in a list)
            head = None
        if head is None:
            head = status_line(status) + header_block(headers)
            if type(headers) is tuple and len(_HEADS) < 1024:
                _HEADS[status, headers] = head
        data = b"%scontent-length: %d\r\n%s\r\n%s" % (head, len(body), b"" if keep_alive else b"connection: close\r\n", body)
        if self.out is None and self.transport is not None and not self.lost:
            self.transport.write(data)  # nothing queued before it: no need to defer
        else:
            self.write(data)

    def _respond_and_close(self, status: int, body: bytes) -> None:
        self.reading_head = self.reading_body = False
        self.respond(status, body, (("content-type", "text/plain; charset=utf-8"),), keep_alive=False)
        self.close_transport()

    # -- HTTP -------------------------------------------------------------------------------
    def _serve_next(self) -> None:
        """Answer queued requests in order (HTTP/1.1 pipelining): a route with an immediate
        handler in this call, without a task (a long-poll keeps its :class:`_Immediate` as
        ``self.task`` until answered); any other in a task that takes the rest of the queue."""
        self.serving = True
        try:
            while self.requests and not self.lost and self.task is None:
                req = self.requests[0]
                route = req.route
                if route is None or route.immediate is None:
                    self.task = self.server.spawn(self._handle_http())
                    self.task.add_done_callback(self._handler_done)
                    return
                self.requests.popleft()
                pending = self.task = _Immediate(self, req)
                request = HttpRequest(req.method, req.path, req.query, header_map(req.headers), req.body, self.client[0])
                forget = run_exchange_now(route, request, req.too_large, pending)
                if not pending.finished:
                    pending.forget = forget  # a long-poll: answered (or forgotten) later
                    return
        finally:
            self.serving = False
        if self.task is None and not self.requests:
            self._idle()

    def _finish(self, req: _Request, response: HttpResponse) -> None:
        """The immediate handler's response to ``req`` (the request in progress)."""
        self.task = None
        if self.lost:
            return
        keep_alive = req.keep_alive and not self.server.closing
        self.respond(response.status, b"" if req.method == "HEAD" else response.body, response.headers, keep_alive)
        if not keep_alive:
            self.requests.clear()
            self.close_transport()
            return
        self.resume(_QUEUED)
        if not self.serving:  # answered later (a long-poll): go on with the queue
            self._serve_next()

    def _idle(self) -> None:
        """Every request answered."""
        if self.eof and not self.lost:
            self.close_transport()
        elif not self.lost and not self.reading_head:
            self._arm(self.server.options.keep_alive, Connection._idle_timeout)

    async def _handle_http(self) -> None:
        """Answer queued requests in order in this task, then go back to reading."""
        while self.requests and not self.lost:
            request = self.requests.popleft()
            keep_alive = await self._answer(request) and not self.server.closing
            if not keep_alive:
                self.requests.clear()
                self.close_transport()
                break
            self.resume(_QUEUED)
        self.task = None
        self._idle()

    async def _answer(self, req: _Request) -> bool:
        path, query, route = req.path, req.query, req.route
        keep_alive = req.keep_alive
        headers: Sequence[tuple[str, str]]
        try:
            if route is None:
                status, headers, body = await asgi_fallback(
                    self.server.app, req.method, path, req.url.partition(b"?")[0], query, req.headers, req.body,
                    self.client, "https" if self.server.options.certfile else "http",
                )
            else:
                request = HttpRequest(req.method, path, query, header_map(req.headers), req.body, self.client[0])
                response = await run_exchange(route, request, req.too_large)
                status, headers, body = response.status, response.headers, response.body
        except asyncio.CancelledError:
            return False
        if req.method == "HEAD":
            body = b""
        self.respond(status, body, headers, keep_alive)
        return keep_alive

    # -- WebSocket --------------------------------------------------------------------------
    def _upgrade_requested(self) -> None:
        self.reading_head = False
        self._disarm()
        path, query = split_url(self.url)
        headers = header_map(self.headers)
        if (
            self.parser.get_method() != b"GET"
            or self.parser.get_http_version() != "1.1"
            or headers.get("upgrade", "").lower() != "websocket"
            or headers.get("sec-websocket-version") != "13"
            or not headers.get("sec-websocket-key")
        ):
            self._respond_and_close(400, b"bad websocket upgrade\n")
            return
        route = self.server.app.resolve("channel", path)
        if route is None or not isinstance(route, ChannelRoute) or self.server.closing:
            self._respond_and_close(403 if not self.server.closing else 503, b"")
            return
        offered = headers.get("sec-websocket-protocol")
        subprotocols = tuple(p.strip() for p in offered.split(",") if p.strip()) if offered else ()
        info = ConnectionInfo("websocket", path, query, headers, self.client[0], self.client[1], subprotocols)
        self.pending_key = headers["sec-websocket-key"].encode("latin-1")
        channel = NativeChannel(self, info, route.max_message_size)
        self.candidate = channel
        self.pause(_UPGRADE)
        self.task = self.server.spawn(self._run_channel(route, channel), channel=True)
        self.task.add_done_callback(self._handler_done)

    def accept_websocket(self, subprotocol: str | None) -> None:
        key = self.pending_key or b""
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        extra = b"Sec-WebSocket-Protocol: " + subprotocol.encode("latin-1") + b"\r\n" if subprotocol else b""
        self.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n" + extra + b"\r\n"
        )
        self.pending_key = None
        self.websocket = self.candidate
        assert self.websocket is not None
        self.reader = FrameReader(self.websocket.max_message_size)
        self._disarm()
        early, self.early = self.early, b""
        self.resume(_UPGRADE)
        if early:
            self._websocket_data(early)

    def expect_messages(self, kind: str) -> None:
        if self.reader is not None:
            self.reader.only = 0x1 if kind == "text" else 0x2

    def refuse_websocket(self, status: int, body: bytes = b"") -> None:
        self.pending_key = None
        self._respond_and_close(status, body)

    def close_websocket(self, code: int, reason: str) -> None:
        self.write(close_frame(code, reason))
        self.close_transport()

    async def _run_channel(self, route: ChannelRoute, channel: NativeChannel) -> None:
        try:
            await run_channel(route, channel)
        finally:
            if self.pending_key is not None:
                self.refuse_websocket(403)  # the handler returned without accepting

    def _websocket_data(self, data: bytes) -> None:
        channel = self.websocket
        reader = self.reader
        assert channel is not None and reader is not None
        if channel.closed:
            return
        try:
            events = reader.feed(data)
        except ProtocolError as error:
            channel.mark_closed(error.code, error.reason)
            self.close_websocket(error.code, error.reason)
            return
        for event in events:
            if event.__class__ is str or event.__class__ is bytes:
                if not channel.deliver(event):
                    self.pause(_INBOX)
            elif isinstance(event, Ping):
                self.write(pong_frame(event.payload))
            elif isinstance(event, Close):
                channel.mark_closed(event.code, event.reason)
                self.close_websocket(event.code if event.code != 1005 else 1000, "")
                return
