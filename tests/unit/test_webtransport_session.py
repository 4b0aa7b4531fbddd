"""WebTransport in memory: an aioquic client ``QuicConnection`` + ``H3Connection`` on one side,
our server-side ``H3Protocol`` (sessions, channels, HTTP/3 requests) on the other, datagrams
handed across by the test (aioquic's own client-and-server pattern; no sockets)."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from typing import Any, Callable

import anyio
import pytest
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from rendezvous.tls import ephemeral_certificate
from rendezvous.transports.base import ChannelClosed, ChannelRoute, ExchangeRoute, HttpResponse, SendTimeout, SessionRoute
from rendezvous.transports.webtransport import (
    CLOSE_WEBTRANSPORT_SESSION,
    HIGH_WATER,
    CapsuleReader,
    WebTransportTransport,
    close_capsule,
    compat,
    frame_message,
    parse_close,
    server_configuration,
)
from rendezvous.transports.webtransport import h3 as h3_module
from rendezvous.transports.webtransport.framing import MessageReader

pytestmark = pytest.mark.anyio

CLIENT_ADDR = ("10.0.0.1", 50000)
SERVER_ADDR = ("10.0.0.2", 4433)
CERTIFICATE = ephemeral_certificate(datetime.datetime.now(datetime.timezone.utc))


class Routes:
    """The part of an app the listener uses: ``resolve(kind, path)``."""

    def __init__(self, *routes: Any) -> None:
        self.routes = routes

    def resolve(self, kind: str, path: str) -> Any:
        types = {"channel": ChannelRoute, "exchange": ExchangeRoute, "session": SessionRoute}[kind]
        return next((r for r in self.routes if isinstance(r, types) and r.path == path), None)


class Wire:
    """Stands in for the UDP socket: what the server sends waits here for the test to hand over."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append(data)


class Link:
    """One client connection to our server-side protocol, in memory."""

    def __init__(self, *routes: Any) -> None:
        self.loop = asyncio.get_running_loop()
        configuration = QuicConfiguration(alpn_protocols=H3_ALPN, is_client=True, max_datagram_frame_size=65536)
        configuration.verify_mode = ssl.CERT_NONE
        self.client = QuicConnection(configuration=configuration)
        self.h3 = H3Connection(self.client, enable_webtransport=True)
        self.listener = WebTransportTransport(Routes(*routes), CERTIFICATE)
        server_quic = QuicConnection(configuration=server_configuration(CERTIFICATE),
                                     original_destination_connection_id=self.client.original_destination_connection_id)
        self.server = self.listener.create_protocol(server_quic)
        self.wire = Wire()
        self.server.connection_made(self.wire)  # type: ignore[arg-type]
        self.events: list[Any] = []  # the client's HTTP/3 events
        self.deaf = False  # the client drops all the server sends (and so acknowledges nothing)
        self.client.connect(SERVER_ADDR, now=self.loop.time())

    def hand_over(self) -> int:
        """Move every datagram waiting on either side; how many moved."""
        now = self.loop.time()
        moved = 0
        for data, _ in self.client.datagrams_to_send(now=now):
            self.server.datagram_received(data, CLIENT_ADDR)
            moved += 1
        sent, self.wire.sent = self.wire.sent, []
        for data in sent:
            if not self.deaf:
                self.client.receive_datagram(data, SERVER_ADDR, now=now)
            moved += 1
        timer = self.client.get_timer()
        if timer is not None and timer <= now:
            self.client.handle_timer(now=now)
        while (event := self.client.next_event()) is not None:
            self.events += self.h3.handle_event(event)
        return moved

    async def until(self, done: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Keep the datagrams (and the handlers' tasks) moving until ``done()`` is true."""
        with anyio.fail_after(timeout):
            while not (result := done()):
                if not self.hand_over():
                    await asyncio.sleep(0.001)  # let timers come due
                await asyncio.sleep(0)
        return result

    async def settle(self, seconds: float = 0.05) -> None:
        end = self.loop.time() + seconds
        await self.until(lambda: self.loop.time() >= end)

    # -- client actions -----------------------------------------------------------------------------
    async def connect(self, path: str, status: bytes = b"200") -> int:
        await self.until(lambda: self.server.h3 is not None)
        session_id = self.client.get_next_available_stream_id()
        self.h3.send_headers(session_id, [
            (b":method", b"CONNECT"), (b":protocol", b"webtransport"), (b":scheme", b"https"),
            (b":authority", b"example.test"), (b":path", path.encode()), (b"sec-webtransport-http3-draft02", b"1"),
        ])
        headers = await self.until(lambda: self.headers(session_id))
        assert headers[b":status"] == status
        return session_id

    def headers(self, stream_id: int) -> dict[bytes, bytes] | None:
        for event in self.events:
            if isinstance(event, HeadersReceived) and event.stream_id == stream_id:
                return dict(event.headers)
        return None

    def open_stream(self, session_id: int) -> int:
        stream_id = self.h3.create_webtransport_stream(session_id)
        compat.register_bidi_stream(self.h3, stream_id, session_id)  # pitfall 10
        return stream_id

    def stream_bytes(self, stream_id: int) -> tuple[bytes, bool]:
        chunks = [e for e in self.events if isinstance(e, WebTransportStreamDataReceived) and e.stream_id == stream_id]
        return b"".join(e.data for e in chunks), any(e.stream_ended for e in chunks)

    def session_bytes(self, session_id: int) -> tuple[bytes, bool]:
        chunks = [e for e in self.events if isinstance(e, DataReceived) and e.stream_id == session_id]
        return b"".join(e.data for e in chunks), any(e.stream_ended for e in chunks)

    def close_received(self, session_id: int) -> tuple[int, str] | None:
        data, ended = self.session_bytes(session_id)
        for capsule in CapsuleReader().feed(data):
            if capsule.type == CLOSE_WEBTRANSPORT_SESSION and ended:
                return parse_close(capsule.payload)
        return None


# -- handlers ---------------------------------------------------------------------------------------------
async def raw_echo(session: Any) -> None:
    await session.accept()
    stream = await session.accept_stream()
    while data := await stream.receive():
        await stream.send(data)
    stream.end()
    await anyio.sleep(10)


class Recorder:
    """A channel handler that echoes each message and keeps what it saw."""

    def __init__(self, echo: bool = True) -> None:
        self.messages: list[str | bytes] = []
        self.closed: ChannelClosed | None = None
        self.channel: Any = None
        self.echo = echo

    async def __call__(self, channel: Any) -> None:
        self.channel = channel
        await channel.accept()
        try:
            while True:
                message = await channel.receive()
                self.messages.append(message)
                if self.echo:
                    await channel.send(message)
        except ChannelClosed as closed:
            self.closed = closed
            raise


# -- sessions and streams -----------------------------------------------------------------------------------
async def test_a_session_is_accepted_and_a_bidirectional_stream_echoes():
    link = Link(SessionRoute("/raw", raw_echo))
    session_id = await link.connect("/raw")
    assert link.headers(session_id)[b"sec-webtransport-http3-draft"] == b"draft02"
    stream_id = link.open_stream(session_id)
    link.client.send_stream_data(stream_id, b"ping " * 1000, end_stream=True)
    assert await link.until(lambda: link.stream_bytes(stream_id)[1])
    assert link.stream_bytes(stream_id) == (b"ping " * 1000, True)
    (session,) = link.listener.open
    assert session.info.transport == "webtransport" and session.info.headers["host"] == "example.test"
    assert (session.info.client_host, session.info.client_port) == CLIENT_ADDR


async def test_a_stream_that_carried_only_its_prefix_is_announced():
    accepted: list[Any] = []

    async def handler(session: Any) -> None:
        await session.accept()
        accepted.append(await session.accept_stream())
        await anyio.sleep(10)

    link = Link(SessionRoute("/raw", handler))
    session_id = await link.connect("/raw")
    stream_id = link.open_stream(session_id)  # sends 0x41 | session id, nothing more
    await link.until(lambda: accepted)
    assert accepted[0].stream_id == stream_id


async def test_a_stream_the_server_opens_reaches_the_client():
    async def handler(session: Any) -> None:
        await session.accept()
        stream = session.open_stream()
        await stream.send(b"from the server")
        stream.end()
        await anyio.sleep(10)

    link = Link(SessionRoute("/raw", handler))
    await link.connect("/raw")
    server_stream = await link.until(lambda: next((e.stream_id for e in link.events
                                                   if isinstance(e, WebTransportStreamDataReceived)), None))
    assert server_stream & 0x3 == 1
    await link.until(lambda: link.stream_bytes(server_stream)[1])
    assert link.stream_bytes(server_stream) == (b"from the server", True)


async def test_unknown_paths_get_404():
    link = Link(SessionRoute("/raw", raw_echo))
    await link.connect("/nowhere", status=b"404")


# -- channels: framing, datagrams, capsules ------------------------------------------------------------------
async def test_channel_messages_echo_on_the_message_stream_and_datagrams_arrive():
    handler = Recorder()
    link = Link(ChannelRoute("/join", handler, max_message_size=1000))
    session_id = await link.connect("/join")
    stream_id = link.open_stream(session_id)
    link.client.send_stream_data(stream_id, frame_message("hello") + frame_message(b"\x01\x02"))
    link.h3.send_datagram(session_id, b"\x00by datagram")
    await link.until(lambda: len(handler.messages) == 3)
    assert sorted(map(repr, handler.messages)) == sorted(map(repr, ["hello", b"\x01\x02", "by datagram"]))
    echoed = await link.until(lambda: len(echo := MessageReader(1000).feed(link.stream_bytes(stream_id)[0])) == 3 and echo)
    assert echoed == handler.messages  # all three back, on the message stream, in the order received


async def test_a_close_capsule_ends_the_channel_with_the_peers_code_and_reason():
    handler = Recorder()
    link = Link(ChannelRoute("/join", handler))
    session_id = await link.connect("/join")
    link.h3.send_data(session_id, close_capsule(4321, "done here"), end_stream=True)
    await link.until(lambda: handler.closed is not None)
    assert (handler.closed.code, handler.closed.reason) == (4321, "done here")
    assert await link.until(lambda: link.session_bytes(session_id)[1])  # FIN back


async def test_unknown_capsules_are_ignored_and_one_in_pieces_is_waited_for():
    handler = Recorder()
    link = Link(ChannelRoute("/join", handler))
    session_id = await link.connect("/join")
    stream_id = link.open_stream(session_id)
    grease = encode_uint_var(0x17 * 0x1F + 0x29) + encode_uint_var(5) + b"grease"[:5]
    close = close_capsule(4000, "later")
    link.h3.send_data(session_id, grease + close[:3], end_stream=False)
    link.client.send_stream_data(stream_id, frame_message("still open"))
    await link.until(lambda: handler.messages == ["still open"])
    await link.settle()
    assert handler.closed is None and link.listener.open  # GREASE ignored, half a close capsule waited for
    link.h3.send_data(session_id, close[3:], end_stream=False)
    await link.until(lambda: handler.closed is not None)
    assert handler.closed.code == 4000


async def test_an_oversized_capsule_closes_the_session_with_1009():
    handler = Recorder()
    link = Link(ChannelRoute("/join", handler))
    session_id = await link.connect("/join")
    link.h3.send_data(session_id, encode_uint_var(0x1234) + encode_uint_var(10**9), end_stream=False)
    assert await link.until(lambda: link.close_received(session_id)) == (1009, "capsule too big")
    assert handler.closed is not None and handler.closed.code == 1009


async def test_server_close_sends_the_close_capsule_and_fin():
    handler = Recorder()
    link = Link(ChannelRoute("/join", handler))
    session_id = await link.connect("/join")
    await link.until(lambda: handler.channel is not None)
    await handler.channel.close(1008, "policy")
    assert await link.until(lambda: link.close_received(session_id)) == (1008, "policy")


async def test_framing_errors_close_with_the_websocket_code():
    handler = Recorder(echo=False)
    link = Link(ChannelRoute("/join", handler, max_message_size=10))
    session_id = await link.connect("/join")
    stream_id = link.open_stream(session_id)
    link.client.send_stream_data(stream_id, frame_message("ok") + frame_message("x" * 11))
    assert await link.until(lambda: link.close_received(session_id)) == (1009, "message too big")
    assert handler.messages == ["ok"]


# -- HTTP/3 requests -----------------------------------------------------------------------------------------
async def test_a_plain_request_reaches_the_exchange_route():
    async def hello(request: Any) -> HttpResponse:
        return HttpResponse.text(200, f"{request.method} {request.path}?{request.query} from {request.client_host}")

    link = Link(ExchangeRoute("/hello", hello))
    await link.until(lambda: link.server.h3 is not None)
    stream_id = link.client.get_next_available_stream_id()
    link.h3.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"),
                                     (b":path", b"/hello?a=1")], end_stream=True)
    body = await link.until(lambda: link.session_bytes(stream_id)[1] and link.session_bytes(stream_id)[0])
    assert link.headers(stream_id)[b":status"] == b"200"
    assert body == f"GET /hello?a=1 from {CLIENT_ADDR[0]}".encode()


# -- backpressure -----------------------------------------------------------------------------------------------
async def deaf_sender(timeout: float | None) -> tuple[Link, list[Any]]:
    """A session whose handler sends 4 x HIGH_WATER on a stream it opened, to a client that has
    gone deaf: ``results`` gets the stream, then ``"sent"`` or the exception the send raised."""
    results: list[Any] = []

    async def handler(session: Any) -> None:
        await session.accept()
        stream = session.open_stream()
        results.append(stream)
        try:
            await stream.send(b"z" * 4 * HIGH_WATER, timeout=timeout)
            results.append("sent")
        except (SendTimeout, ChannelClosed) as error:
            results.append(error)
        await anyio.sleep(10)

    link = Link(SessionRoute("/raw", handler))
    await link.connect("/raw")
    link.deaf = True
    await link.until(lambda: results)
    return link, results


async def test_a_waiting_send_is_woken_by_acknowledgements_not_by_a_clock(monkeypatch):
    monkeypatch.setattr(h3_module, "DRAIN_RECHECK", 60.0)  # only an event can end the wait in time
    link, results = await deaf_sender(None)
    await link.settle(0.2)
    stream_id = results[0].stream_id
    assert len(results) == 1 and link.server.unacked(stream_id) > HIGH_WATER
    assert len(link.server._drains[stream_id]) == 1  # parked on a future, not sleeping in a loop
    link.deaf = False
    await link.until(lambda: "sent" in results, timeout=10)
    assert link.server.unacked(stream_id) <= HIGH_WATER and not link.server._drains


async def test_a_waiting_send_times_out(monkeypatch):
    monkeypatch.setattr(h3_module, "DRAIN_RECHECK", 60.0)
    start = asyncio.get_running_loop().time()
    link, results = await deaf_sender(0.3)
    await link.until(lambda: len(results) == 2)
    assert isinstance(results[1], SendTimeout) and 0.25 < link.loop.time() - start < 2


async def test_closing_the_session_ends_a_waiting_send(monkeypatch):
    monkeypatch.setattr(h3_module, "DRAIN_RECHECK", 60.0)
    link, results = await deaf_sender(None)
    await link.settle(0.1)
    (session,) = link.listener.open
    await session.close(1001)
    await link.until(lambda: len(results) == 2, timeout=1)
    assert isinstance(results[1], ChannelClosed) and results[1].code == 1001


# -- the compatibility module against the installed aioquic ---------------------------------------------------------
async def test_compat_reads_what_it_promises():
    link = Link(SessionRoute("/raw", raw_echo))
    await link.connect("/raw")
    assert compat.peer_address(link.server.quic) == CLIENT_ADDR
    assert compat.peer_address(QuicConnection(configuration=QuicConfiguration(is_client=True))) == (None, None)
    assert compat.peer_certificate(link.client) == CERTIFICATE.certificate
    assert compat.peer_certificate(link.server.quic) is None  # no client certificate
    assert compat.unacked_bytes(link.server.quic, 999) == 0  # no such stream
