"""The HTTP/3 side of the UDP listener: one :class:`H3Protocol` per QUIC connection.

It turns aioquic's QUIC and HTTP/3 events into the framework's terms: a plain request reaches an
exchange route through :func:`run_exchange`; an extended CONNECT (``:protocol webtransport``)
to a session or channel route opens a :class:`WebTransportSession` / :class:`WebTransportChannel`
run by :func:`run_channel`. It also carries those sessions' bytes out, with backpressure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol

from aioquic.asyncio import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DatagramReceived, DataReceived, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, ProtocolNegotiated, StreamDataReceived, StreamReset

from rendezvous.transports.base import (
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
from rendezvous.transports.handlers import run_channel, run_exchange
from rendezvous.transports.webtransport import compat
from rendezvous.transports.webtransport.capsules import PeerStreams
from rendezvous.transports.webtransport.session import WebTransportChannel, WebTransportSession

HIGH_WATER = 256 * 1024  # unacknowledged bytes per stream before a send waits
DRAIN_RECHECK = 1.0  # seconds: a waiting send looks again even without news (a safety net only)


class Host(Protocol):
    """What a connection needs from the listener that accepted it."""

    app: Any  # resolves routes: app.resolve(kind, path)
    closing: bool
    open: set[Any]

    def spawn(self, coro: Any) -> None: ...


def plain_headers(headers: dict[str, str]) -> dict[str, str]:
    """Request headers without the pseudo-headers; HTTP/3's ``:authority`` is HTTP/1.1's ``host``."""
    plain = {k: v for k, v in headers.items() if not k.startswith(":")}
    plain.setdefault("host", headers.get(":authority", ""))
    return plain


def offered_protocols(value: str) -> tuple[str, ...]:
    """``WT-Available-Protocols`` (a structured-field list of strings: ``"a", "b"``)."""
    return tuple(p.strip().strip('"') for p in value.split(",") if p.strip().strip('"'))


class H3Protocol(QuicConnectionProtocol):
    """One QUIC connection: HTTP/3 requests and WebTransport sessions."""

    def __init__(self, quic: QuicConnection, *args: Any, transport: Host, **kwargs: Any) -> None:
        super().__init__(quic, *args, **kwargs)
        self.quic = quic
        self.owner = transport
        self.h3: H3Connection | None = None
        self.sessions: dict[int, WebTransportSession] = {}
        self._peer_streams = PeerStreams(is_client=False)
        self.requests: dict[int, tuple[ExchangeRoute, dict[str, str], bytearray]] = {}  # HTTP/3 bodies arriving
        self.exchanges: dict[int, asyncio.Task[Any]] = {}  # HTTP/3 requests being handled
        self._drains: dict[int, list[asyncio.Future[None]]] = {}  # sends waiting for acknowledgements, by stream
        self.loop = asyncio.get_running_loop()

    # -- QUIC events -------------------------------------------------------------------------------
    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        if self._drains:  # acknowledgements (and flow-control credit) only ever arrive here
            self._wake_drained()

    def quic_event_received(self, event: Any) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self.h3 = H3Connection(self.quic, enable_webtransport=True)
        if isinstance(event, StreamReset):
            self._peer_streams.forget(event.stream_id)
            if event.stream_id in self.sessions:
                self.sessions.pop(event.stream_id)._mark_closed(1006)
            self.requests.pop(event.stream_id, None)
            task = self.exchanges.pop(event.stream_id, None)
            if task is not None:
                task.cancel()  # the client gave up on the request: as an HTTP disconnect
        if isinstance(event, ConnectionTerminated):  # the peer closed the QUIC connection (or it timed out)
            self._lost()
            for task in self.exchanges.values():
                task.cancel()
        if self.h3 is None:
            return
        for h3_event in self.h3.handle_event(event):
            self._h3_event(h3_event)
        if isinstance(event, StreamDataReceived):
            self._announce(event)

    def _announce(self, event: StreamDataReceived) -> None:
        """Report a peer's WebTransport stream as soon as its prefix arrived.

        aioquic 1.7.2 emits no event for a stream that carried only its prefix (``0x41``,
        session id); Chromium opens streams exactly like that (spec wasimoff.md §7.3).
        """
        session_id = self._peer_streams.feed(event.stream_id, event.data, event.end_stream)
        channel = self.sessions.get(session_id) if session_id is not None else None
        if channel is not None:
            channel._stream_data(event.stream_id, b"", False)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._lost()

    def _lost(self) -> None:
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
            request = HttpRequest(method, path, query, plain_headers(headers), b"", compat.peer_address(self.quic)[0])
            self._start_exchange(route, stream_id, request)
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
        request = HttpRequest(headers.get(":method", "GET"), path, query, plain_headers(headers),
                              b"" if too_large else bytes(body), compat.peer_address(self.quic)[0])
        self._start_exchange(route, stream_id, request, too_large)

    def _start_exchange(self, route: ExchangeRoute, stream_id: int, request: HttpRequest, too_large: bool = False) -> None:
        self.owner.spawn(self._exchange(route, stream_id, request, too_large))

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

    # -- WebTransport sessions -------------------------------------------------------------------------
    def _open_session(self, session_id: int, headers: dict[str, str]) -> None:
        path, _, query = headers.get(":path", "/").partition("?")
        route = self.owner.app.resolve("session", path) or self.owner.app.resolve("channel", path)
        if not isinstance(route, (ChannelRoute, SessionRoute)) or self.owner.closing:
            self.respond(session_id, 404 if not self.owner.closing else 503, end=True)
            return
        peer = compat.peer_address(self.quic)
        info = ConnectionInfo("webtransport", path, query, plain_headers(headers),
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
            self.quic.send_stream_data(stream_id, data, end_stream=end)
        except Exception:
            return
        self.transmit()

    def open_bidi_stream(self, session_id: int) -> int:
        assert self.h3 is not None
        stream_id = self.h3.create_webtransport_stream(session_id, is_unidirectional=False)
        compat.register_bidi_stream(self.h3, stream_id, session_id)
        self.transmit()
        return stream_id

    def end_session(self, session_id: int, capsule: bytes) -> None:
        self.sessions.pop(session_id, None)
        if self.h3 is None:
            return
        try:
            self.h3.send_data(session_id, capsule, end_stream=True)
        except Exception:
            return
        self.transmit()

    # -- backpressure --------------------------------------------------------------------------------
    def unacked(self, stream_id: int) -> int:
        return compat.unacked_bytes(self.quic, stream_id)

    async def drain(self, stream_id: int, timeout: float | None, state: Inbox) -> None:
        """Backpressure: wait while more than ``HIGH_WATER`` bytes on the stream are unacknowledged
        (a peer that stops reading stops acknowledging). Raises :class:`SendTimeout` after ``timeout``.

        The wait is woken by the peer's packets (:meth:`datagram_received`: the only place
        acknowledgements and flow-control credit arrive) and by the session closing; it looks
        again every ``DRAIN_RECHECK`` seconds in case neither comes.
        """
        if self.unacked(stream_id) <= HIGH_WATER:
            return
        deadline = None if timeout is None else self.loop.time() + timeout
        while self.unacked(stream_id) > HIGH_WATER:
            state.raise_if_closed()
            wait = DRAIN_RECHECK if deadline is None else min(DRAIN_RECHECK, deadline - self.loop.time())
            if wait <= 0:
                raise SendTimeout()
            waiter = self.loop.create_future()
            waiters = self._drains.setdefault(stream_id, [])
            waiters.append(waiter)
            try:
                await asyncio.wait((waiter,), timeout=wait)
            finally:
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters and self._drains.get(stream_id) is waiters:
                    del self._drains[stream_id]

    def _wake_drained(self) -> None:
        """Wake the sends whose stream fell to the high-water mark."""
        self._wake(stream_id for stream_id in self._drains if self.unacked(stream_id) <= HIGH_WATER)

    def wake_drains(self) -> None:
        """Wake every waiting send (a session closed: they look at its state)."""
        self._wake(self._drains)

    def _wake(self, stream_ids: Iterable[int]) -> None:
        for stream_id in list(stream_ids):
            for waiter in self._drains[stream_id]:
                if not waiter.done():
                    waiter.set_result(None)
