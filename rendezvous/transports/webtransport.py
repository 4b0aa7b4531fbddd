"""WebTransport transport (HTTP/3 over QUIC, aioquic): channel routes over WebTransport sessions.

A session opened with an extended CONNECT to a channel route's path (``/join``, ...) is one
:class:`rendezvous.transports.base.Channel`. Messages travel on the first bidirectional
stream the client opens in the session, framed as ``u32 length (big endian) | u8 kind
(0 text, 1 binary) | payload``; the client opens that stream as soon as the session is ready.
The client may also send a message as a datagram or as a unidirectional stream (each one is
``u8 kind | payload``, a uni stream ended by FIN); the server sends on the bidirectional stream.
Sends wait while more than ``HIGH_WATER`` bytes are unacknowledged (backpressure).
A :class:`SessionRoute` gets the whole :class:`WebTransportSession` instead (raw streams).
Closing sends a ``CLOSE_WEBTRANSPORT_SESSION`` capsule carrying the close code (1000, 1009,
...) and ends the CONNECT stream. Capsules the peer sends (GREASE, close) are parsed; a close
capsule ends the channel with the peer's code.

Plain HTTP/3 requests (not CONNECT) reach the exchange routes, as over HTTP/1.1 (the original
wasimoff broker serves every route over HTTP/3 too); static files are not served over HTTP/3.

The UDP listener runs in the same event loop as the HTTP server and starts and stops with it.
WebTransport here negotiates draft-02 (what Chromium 156 speaks; spec webtransport.md).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import anyio
from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.buffer import Buffer, BufferReadError, encode_uint_var
from aioquic.h3.connection import H3_ALPN, FrameType, H3Connection
from aioquic.h3.events import DataReceived, DatagramReceived, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, ProtocolNegotiated, StreamDataReceived, StreamReset

from rendezvous.transports.handlers import run_channel, run_exchange
from rendezvous.transports.base import (
    ChannelClosed,
    ChannelRoute,
    ConnectionInfo,
    ExchangeRoute,
    HttpRequest,
    HttpResponse,
    Inbox,
    SendTimeout,
    SessionRoute,
    header_map,
)

CLOSE_WEBTRANSPORT_SESSION = 0x2843
TEXT, BINARY = 0, 1
HIGH_WATER = 256 * 1024  # unacknowledged bytes per stream before a send waits


def frame_message(message: str | bytes) -> bytes:
    kind, data = (TEXT, message.encode()) if isinstance(message, str) else (BINARY, message)
    return struct.pack("!IB", len(data), kind) + data


def close_capsule(code: int, reason: str = "") -> bytes:
    payload = struct.pack("!I", code) + reason.encode()[:1024]
    return encode_uint_var(CLOSE_WEBTRANSPORT_SESSION) + encode_uint_var(len(payload)) + payload


def parse_capsules(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Whole capsules at the front of ``buffer`` (removed from it)."""
    out = []
    while buffer:
        buf = Buffer(data=bytes(buffer))
        try:
            kind = buf.pull_uint_var()
            length = buf.pull_uint_var()
            start = buf.tell()
        except BufferReadError:
            break
        if len(buffer) < start + length:
            break
        out.append((kind, bytes(buffer[start:start + length])))
        del buffer[: start + length]
    return out


def _plain(headers: dict[str, str]) -> dict[str, str]:
    """Request headers without the pseudo-headers; HTTP/3's ``:authority`` is HTTP/1.1's ``host``."""
    plain = {k: v for k, v in headers.items() if not k.startswith(":")}
    plain.setdefault("host", headers.get(":authority", ""))
    return plain


def offered_protocols(value: str) -> tuple[str, ...]:
    """``WT-Available-Protocols`` (a structured-field list of strings: ``"a", "b"``)."""
    return tuple(p.strip().strip('"') for p in value.split(",") if p.strip().strip('"'))


class WebTransportStream:
    """One bidirectional WebTransport stream of a :class:`WebTransportSession` (raw bytes)."""

    def __init__(self, session: "WebTransportSession", stream_id: int) -> None:
        self.session = session
        self.stream_id = stream_id
        self._inbox = Inbox()

    async def receive(self) -> bytes:
        """The next bytes the peer sent; ``b""`` once it ended the stream. Raises
        :class:`ChannelClosed` when the session closes."""
        return await self._inbox.get()  # type: ignore[return-value]

    async def send(self, data: bytes, timeout: float | None = None) -> None:
        await self.session._send_stream(self.stream_id, data, timeout)

    def end(self) -> None:
        self.session._protocol.send_stream(self.stream_id, b"", end=True)


class WebTransportSession:
    """A WebTransport session handed to a :class:`SessionRoute` handler whole: it accepts the
    streams the peer opens and opens its own (for protocols that use QUIC streams directly)."""

    def __init__(self, protocol: "_H3Protocol", session_id: int, info: ConnectionInfo) -> None:
        self.info = info
        self._protocol = protocol
        self._session_id = session_id
        self._capsules: bytearray = bytearray()
        self._inbox = Inbox()  # for a session: closed state only (peer streams go to _incoming)
        self._accepted = False
        self._streams: dict[int, WebTransportStream] = {}
        self._incoming = Inbox()  # streams the peer opened, not yet accepted

    @property
    def closed(self) -> bool:
        return self._inbox.closed

    async def accept(self, subprotocol: str | None = None) -> None:
        if self._inbox.closed:
            raise ChannelClosed(1006, "session gone before accept")
        self._accepted = True
        self._protocol.respond(self._session_id, 200, protocol=subprotocol)

    async def refuse(self, status: int = 403, body: bytes = b"") -> None:
        self._inbox.close(1005)
        self._protocol.respond(self._session_id, status, end=True)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._inbox.closed:
            return
        self._mark_closed(code)
        if self._accepted:
            self._protocol.end_session(self._session_id, close_capsule(code, reason))

    async def accept_stream(self) -> WebTransportStream:
        """The next bidirectional stream the peer opened (announced even before any payload)."""
        self._inbox.raise_if_closed()
        return await self._incoming.get()  # type: ignore[return-value]

    def open_stream(self) -> WebTransportStream:
        """A new server-initiated bidirectional stream (its preamble is sent at once)."""
        self._inbox.raise_if_closed()
        stream_id = self._protocol.open_bidi_stream(self._session_id)
        stream = self._streams[stream_id] = WebTransportStream(self, stream_id)
        return stream

    async def _send_stream(self, stream_id: int, data: bytes, timeout: float | None) -> None:
        self._inbox.raise_if_closed()
        self._protocol.send_stream(stream_id, data)
        await self._protocol.drain(stream_id, timeout, self._inbox)

    # -- from the protocol ---------------------------------------------------------------
    def _mark_closed(self, code: int) -> None:
        self._inbox.close(code)
        self._incoming.close(code)
        for stream in self._streams.values():
            stream._inbox.close(code)

    def _datagram(self, data: bytes) -> None:
        pass  # raw sessions: no datagrams used (gen A has none)

    def _stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id & 0x3 != 0:  # not a client-initiated bidirectional stream
                return
            stream = self._streams[stream_id] = WebTransportStream(self, stream_id)
            self._incoming.put(stream)  # type: ignore[arg-type]
        if data:
            stream._inbox.put(data)
        if ended:
            stream._inbox.put(b"")

    def _session_data(self, data: bytes, ended: bool) -> None:
        self._capsules += data
        for kind, payload in parse_capsules(self._capsules):
            if kind == CLOSE_WEBTRANSPORT_SESSION and len(payload) >= 4:
                self._mark_closed(struct.unpack("!I", payload[:4])[0])
            # anything else (GREASE capsules, ...) is ignored
        if ended:
            self._mark_closed(1005)  # (a close capsule before it already set the code)
            self._protocol.end_session(self._session_id, b"")


class WebTransportChannel(WebTransportSession):
    """One WebTransport session as a message channel (framed on the client's first bidi stream)."""

    def __init__(self, protocol: "_H3Protocol", session_id: int, info: ConnectionInfo, max_message_size: int) -> None:
        super().__init__(protocol, session_id, info)
        self._max = max_message_size
        self._stream_id: int | None = None
        self._buffer: bytearray = bytearray()  # stream bytes not yet a whole message
        self._pending_out: list[bytes] = []
        self._uni: dict[int, bytearray] = {}  # unidirectional streams still arriving

    async def receive(self) -> str | bytes:
        return await self._inbox.get()

    async def send(self, message: str | bytes, timeout: float | None = None) -> None:
        self._inbox.raise_if_closed()
        data = frame_message(message)
        if self._stream_id is None:
            self._pending_out.append(data)  # before the client opened its stream
            return
        await self._send_stream(self._stream_id, data, timeout)

    def _one_message(self, data: bytes) -> None:
        """A whole ``u8 kind | payload`` message (a datagram or a unidirectional stream)."""
        if not data or data[0] not in (TEXT, BINARY):
            return  # not a message: dropped (a datagram has no one to tell)
        if len(data) - 1 > self._max:
            self._protocol.loop.create_task(self.close(1009, "message too big"))
            return
        if data[0] == TEXT:
            try:
                self._inbox.put(data[1:].decode("utf-8"))
            except UnicodeDecodeError:
                self._protocol.loop.create_task(self.close(1007, "invalid UTF-8"))
        else:
            self._inbox.put(data[1:])

    def _datagram(self, data: bytes) -> None:
        self._one_message(data)

    def _stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        if stream_id & 0x2:  # a unidirectional stream from the peer: one message, ended by FIN
            buffer = self._uni.setdefault(stream_id, bytearray())
            buffer += data
            if len(buffer) > self._max + 1:
                del self._uni[stream_id]
                self._protocol.loop.create_task(self.close(1009, "message too big"))
            elif ended:
                self._one_message(bytes(self._uni.pop(stream_id)))
            return
        if self._stream_id is None:
            self._stream_id = stream_id
            for pending in self._pending_out:
                self._protocol.send_stream(stream_id, pending)
            self._pending_out.clear()
        if stream_id != self._stream_id:
            return  # only the first bidirectional stream carries messages
        self._buffer += data
        while len(self._buffer) >= 5:
            length, kind = struct.unpack_from("!IB", self._buffer)
            if length > self._max:
                self._protocol.loop.create_task(self.close(1009, "message too big"))
                return
            if kind not in (TEXT, BINARY):
                self._protocol.loop.create_task(self.close(1002, "bad frame kind"))
                return
            if len(self._buffer) < 5 + length:
                break
            payload = bytes(self._buffer[5:5 + length])
            del self._buffer[:5 + length]
            if kind == TEXT:
                try:
                    self._inbox.put(payload.decode("utf-8"))
                except UnicodeDecodeError:
                    self._protocol.loop.create_task(self.close(1007, "invalid UTF-8"))
                    return
            else:
                self._inbox.put(payload)
        if ended:
            self._mark_closed(1005)


class _H3Protocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, transport: "WebTransportTransport", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = transport
        self.h3: H3Connection | None = None
        self.sessions: dict[int, WebTransportSession] = {}
        self._announced: set[int] = set()  # peer streams already reported
        self.requests: dict[int, tuple[ExchangeRoute, dict[str, str], bytearray]] = {}  # HTTP/3 bodies arriving
        self.exchanges: dict[int, asyncio.Task[Any]] = {}  # HTTP/3 requests being handled
        self.loop = asyncio.get_running_loop()

    def quic_event_received(self, event: Any) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self.h3 = H3Connection(self._quic, enable_webtransport=True)
        if isinstance(event, StreamReset) and event.stream_id in self.sessions:
            self.sessions.pop(event.stream_id)._mark_closed(1006)
        if isinstance(event, StreamReset):
            self.requests.pop(event.stream_id, None)
            task = self.exchanges.pop(event.stream_id, None)
            if task is not None:
                task.cancel()  # the client gave up on the request: as an HTTP disconnect
        if isinstance(event, ConnectionTerminated):  # the peer closed the QUIC connection (or it timed out)
            for channel in self.sessions.values():
                channel._mark_closed(1006)
            self.sessions.clear()
            for task in self.exchanges.values():
                task.cancel()
        if self.h3 is None:
            return
        for h3_event in self.h3.handle_event(event):
            self._h3_event(h3_event)
        if isinstance(event, StreamDataReceived) and event.stream_id not in self._announced:
            self._announce(event.stream_id)

    def _announce(self, stream_id: int) -> None:
        """Report a peer's WebTransport stream as soon as its preamble arrived.

        aioquic 1.7.2 emits no event for a stream that carried only its preamble (``0x41``,
        session id); Chromium opens streams exactly like that (spec wasimoff.md §7.3).
        """
        stream = self.h3._stream.get(stream_id) if self.h3 is not None else None
        if stream is None or stream.frame_type != FrameType.WEBTRANSPORT_STREAM or stream.session_id is None:
            if stream is not None and stream.stream_type is not None:
                self._announced.add(stream_id)  # a unidirectional H3 control/QPACK stream: never ours
            return
        self._announced.add(stream_id)
        channel = self.sessions.get(stream.session_id)
        if channel is not None:
            channel._stream_data(stream_id, b"", False)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        for channel in self.sessions.values():
            channel._mark_closed(1006)
        self.sessions.clear()

    def _h3_event(self, event: Any) -> None:
        if isinstance(event, HeadersReceived):
            headers = header_map(event.headers)
            if headers.get(":method") == "CONNECT" and headers.get(":protocol") == "webtransport":
                self._open_session(event.stream_id, headers)
            else:
                self._begin_request(event.stream_id, headers, event.stream_ended)
        elif isinstance(event, WebTransportStreamDataReceived):
            self._announced.add(event.stream_id)
            channel = self.sessions.get(event.session_id)
            if channel is not None:
                channel._stream_data(event.stream_id, event.data, event.stream_ended)
        elif isinstance(event, DataReceived):
            channel = self.sessions.get(event.stream_id)
            if channel is not None:
                channel._session_data(event.data, event.stream_ended)
            elif event.stream_id in self.requests:
                self._request_data(event.stream_id, event.data, event.stream_ended)
        elif isinstance(event, DatagramReceived):
            channel = self.sessions.get(event.stream_id)
            if channel is not None:
                channel._datagram(event.data)

    # -- plain HTTP/3 requests: exchange routes, as over HTTP/1.1 ----------------------------------
    def _begin_request(self, stream_id: int, headers: dict[str, str], ended: bool) -> None:
        path, _, query = headers.get(":path", "/").partition("?")
        route = self.owner.app.resolve("exchange", path)
        method = headers.get(":method", "GET")
        if not isinstance(route, ExchangeRoute) or self.owner.closing:
            self.reply(stream_id, HttpResponse.text(404 if not self.owner.closing else 503, "not found\n"))
            return
        if route.refusal(method) is not None:  # answered at once, without waiting for a body
            self._start_exchange(route, stream_id, HttpRequest(method, path, query, _plain(headers), b"", self._peer()[0]))
            return
        self.requests[stream_id] = (route, headers, bytearray())
        if ended:
            self._request_data(stream_id, b"", True)

    def _request_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        route, headers, body = self.requests[stream_id]
        body += data
        too_large = len(body) > route.max_body_size
        if not ended and not too_large:
            return
        del self.requests[stream_id]
        path, _, query = headers.get(":path", "/").partition("?")
        request = HttpRequest(headers.get(":method", "GET"), path, query, _plain(headers), b"" if too_large else bytes(body), self._peer()[0])
        self._start_exchange(route, stream_id, request, too_large)

    def _start_exchange(self, route: ExchangeRoute, stream_id: int, request: HttpRequest, too_large: bool = False) -> None:
        self.owner.spawn(self._exchange(route, stream_id, request, too_large))

    def _peer(self) -> tuple[Any, Any]:
        return self._quic._network_paths[0].addr if self._quic._network_paths else (None, None)

    async def _exchange(self, route: ExchangeRoute, stream_id: int, request: HttpRequest, too_large: bool) -> None:
        self.exchanges[stream_id] = asyncio.current_task()  # type: ignore[assignment]
        try:
            response = await run_exchange(route, request, too_large)
        finally:
            self.exchanges.pop(stream_id, None)
        self.reply(stream_id, response)

    def reply(self, stream_id: int, response: HttpResponse) -> None:
        headers = [(b":status", str(response.status).encode())]
        headers += [(k.lower().encode(), v.encode("latin-1")) for k, v in response.headers]
        headers.append((b"content-length", str(len(response.body)).encode()))
        self._send(stream_id, headers, response.body, end=True)

    def _send(self, stream_id: int, headers: list[tuple[bytes, bytes]], body: bytes = b"", end: bool = False) -> None:
        """Response headers (and a body) on a request stream; a stream already gone is let be."""
        if self.h3 is None:
            return
        try:
            self.h3.send_headers(stream_id, headers, end_stream=end and not body)
            if body:
                self.h3.send_data(stream_id, body, end_stream=end)
        except Exception:  # the stream is already gone
            return
        self.transmit()

    def _open_session(self, session_id: int, headers: dict[str, str]) -> None:
        path, _, query = headers.get(":path", "/").partition("?")
        route = self.owner.app.resolve("session", path) or self.owner.app.resolve("channel", path)
        if not isinstance(route, (ChannelRoute, SessionRoute)) or self.owner.closing:
            self.respond(session_id, 404 if not self.owner.closing else 503, end=True)
            return
        peer = self._peer()
        info = ConnectionInfo("webtransport", path, query, _plain(headers),
                              peer[0], peer[1], offered_protocols(headers.get("wt-available-protocols", "")))
        if isinstance(route, SessionRoute):
            channel: WebTransportSession = WebTransportSession(self, session_id, info)
        else:
            channel = WebTransportChannel(self, session_id, info, route.max_message_size)
        self.sessions[session_id] = channel
        self.owner.spawn(self._run(route, channel))

    async def _run(self, route: ChannelRoute | SessionRoute, channel: WebTransportSession) -> None:
        self.owner.open.add(channel)
        try:
            await run_channel(route, channel)  # type: ignore[arg-type]
        finally:
            self.owner.open.discard(channel)

    # -- sending -------------------------------------------------------------------------------
    def respond(self, stream_id: int, status: int, end: bool = False, protocol: str | None = None) -> None:
        """The answer to an extended CONNECT."""
        headers = [(b":status", str(status).encode())]
        if status == 200:
            headers.append((b"sec-webtransport-http3-draft", b"draft02"))
        if protocol is not None:
            headers.append((b"wt-protocol", f'"{protocol}"'.encode()))  # an sf-string, as offered
        self._send(stream_id, headers, end=end)

    def send_stream(self, stream_id: int, data: bytes, end: bool = False) -> None:
        try:
            self._quic.send_stream_data(stream_id, data, end_stream=end)
        except Exception:
            return
        self.transmit()

    def open_bidi_stream(self, session_id: int) -> int:
        assert self.h3 is not None
        stream_id = self.h3.create_webtransport_stream(session_id, is_unidirectional=False)
        # aioquic 1.7.2 does not register a bidirectional WebTransport stream it opens itself
        # (spec webtransport.md, pitfall 10): without this the peer's bytes parse as HTTP/3 frames.
        with self.h3._get_or_create_stream(stream_id) as stream:
            stream.frame_type = FrameType.WEBTRANSPORT_STREAM
            stream.session_id = session_id
        self._announced.add(stream_id)
        self.transmit()
        return stream_id

    def unacked(self, stream_id: int) -> int:
        stream = self._quic._streams.get(stream_id)
        return len(stream.sender._buffer) if stream is not None else 0

    async def drain(self, stream_id: int, timeout: float | None, state: Inbox) -> None:
        """Backpressure: wait while more than ``HIGH_WATER`` bytes on the stream are unacknowledged
        (a peer that stops reading stops acknowledging). Raises :class:`SendTimeout` after ``timeout``."""
        if self.unacked(stream_id) <= HIGH_WATER:
            return
        deadline = None if timeout is None else self.loop.time() + timeout
        while self.unacked(stream_id) > HIGH_WATER:
            state.raise_if_closed()
            if deadline is not None and self.loop.time() >= deadline:
                raise SendTimeout()
            await asyncio.sleep(0.005)

    def end_session(self, session_id: int, capsule: bytes) -> None:
        self.sessions.pop(session_id, None)
        if self.h3 is None:
            return
        try:
            self.h3.send_data(session_id, capsule, end_stream=True)
        except Exception:
            return
        self.transmit()


class WebTransportTransport:
    """The UDP listener. Not an ASGI transport: started by the server beside the HTTP server."""

    name = "webtransport"

    def __init__(self, app: Any, certificate: Any) -> None:
        self.app = app
        self.certificate = certificate
        self.open: set[WebTransportSession] = set()
        self.closing = False
        self._server: Any = None
        self.port: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _configuration(self) -> QuicConfiguration:
        configuration = QuicConfiguration(alpn_protocols=H3_ALPN, is_client=False, max_datagram_frame_size=65536)
        configuration.certificate = self.certificate.certificate
        configuration.private_key = self.certificate.private_key
        return configuration

    async def start(self, host: str, port: int) -> int:
        self._server = await serve(host, port, configuration=self._configuration(),
                                   create_protocol=lambda *a, **k: _H3Protocol(*a, transport=self, **k))
        self.port = self._server._transport.get_extra_info("sockname")[1]
        return self.port

    def use_certificate(self, certificate: Any) -> None:
        """New sessions get ``certificate``; sessions already open keep theirs."""
        self.certificate = certificate
        if self._server is not None:
            self._server._configuration = self._configuration()

    async def shutdown(self, code: int = 1001) -> None:
        self.closing = True
        for channel in list(self.open):
            await channel.close(code, "server shutting down")
        await anyio.sleep(0.05)  # let the close capsules leave
        if self._server is not None:
            self._server.close()
