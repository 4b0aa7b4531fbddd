"""HTTP/3 and WebTransport clients for tests (aioquic), re-exported by :mod:`rendezvous.testing`.

- :func:`h3_call`: one HTTP/3 request, e.g. to an exchange route on the WebTransport listener.
- :class:`WebTransportSessionClient`: a session with raw streams.
- :func:`wt_connect` / :class:`WebTransportClient`: a session speaking rendezvous's channel
  framing (docs/transports.md).

The private aioquic attributes these need are in :mod:`rendezvous.transports.webtransport.compat`,
shared with the server.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import anyio
from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, StreamDataReceived

from rendezvous.transports.webtransport import compat
from rendezvous.transports.webtransport.capsules import (
    CLOSE_WEBTRANSPORT_SESSION,
    CapsuleReader,
    PeerStreams,
    close_capsule,
    parse_close,
)
from rendezvous.transports.webtransport.framing import MessageReader, frame_message


def _target(parts: Any) -> bytes:
    return ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode()


def _client_configuration(verify: bool = False, datagrams: bool = False) -> QuicConfiguration:
    configuration = QuicConfiguration(alpn_protocols=H3_ALPN, is_client=True,
                                      max_datagram_frame_size=65536 if datagrams else None)
    if not verify:
        configuration.verify_mode = ssl.CERT_NONE
    return configuration


class _RequestProtocol(QuicConnectionProtocol):
    """An HTTP/3 client connection collecting one response."""

    def __init__(self, quic: QuicConnection, *args: Any, **kwargs: Any) -> None:
        super().__init__(quic, *args, **kwargs)
        self.quic = quic
        self.h3 = H3Connection(quic)
        self.headers: dict[str, str] = {}
        self.body = b""
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event: Any) -> None:
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self.headers.update({k.decode(): v.decode() for k, v in h3_event.headers})
            elif isinstance(h3_event, DataReceived):
                self.body += h3_event.data
            if getattr(h3_event, "stream_ended", False) and not self.done.done():
                self.done.set_result(None)


async def h3_call(url: str, method: str = "GET", body: bytes = b"", headers: Mapping[str, str] | None = None,
                  timeout: float = 30.0) -> Any:
    """One HTTP/3 request (aioquic; certificate not verified), e.g. to the WebTransport listener.

    Returns a :class:`rendezvous.testing.HttpReply`.
    """
    from rendezvous.testing import HttpReply

    parts = urlsplit(url)
    with anyio.fail_after(timeout):
        async with connect(parts.hostname or "", parts.port or 443, configuration=_client_configuration(),
                           create_protocol=_RequestProtocol) as protocol:
            assert isinstance(protocol, _RequestProtocol)
            stream_id = protocol.quic.get_next_available_stream_id()
            protocol.h3.send_headers(stream_id, [
                (b":method", method.encode()), (b":scheme", b"https"), (b":authority", parts.netloc.encode()),
                (b":path", _target(parts)), *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
            ], end_stream=not body)
            if body:
                protocol.h3.send_data(stream_id, body, end_stream=True)
            protocol.transmit()
            await protocol.done
    reply_headers = dict(protocol.headers)
    status = int(reply_headers.pop(":status"))
    return HttpReply(status, reply_headers, protocol.body)


class _SessionProtocol(QuicConnectionProtocol):
    """The client's QUIC connection, reporting to its :class:`WebTransportSessionClient`."""

    client: WebTransportSessionClient

    def __init__(self, quic: QuicConnection, *args: Any, **kwargs: Any) -> None:
        super().__init__(quic, *args, **kwargs)
        self.quic = quic
        self.h3 = H3Connection(quic, enable_webtransport=True)
        self.peer_streams = PeerStreams(is_client=True)

    def quic_event_received(self, event: Any) -> None:
        client = self.client
        if isinstance(event, ConnectionTerminated):
            client._closed.set()
            if not client._ready.done():
                client._ready.set_exception(ConnectionError(event.reason_phrase))
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived) and h3_event.stream_id == client.session_id:
                client._headers(dict(h3_event.headers))
            elif isinstance(h3_event, WebTransportStreamDataReceived):
                client._stream_data(h3_event.stream_id, h3_event.data, h3_event.stream_ended)
            elif isinstance(h3_event, DataReceived) and h3_event.stream_id == client.session_id:
                client._session_data(h3_event.data, h3_event.stream_ended)
        # A server stream that so far carried only its prefix (aioquic reports none).
        if (
            isinstance(event, StreamDataReceived)
            and self.peer_streams.feed(event.stream_id, event.data, event.end_stream) == client.session_id
        ):
            client._stream_data(event.stream_id, b"", False)


class WebTransportSessionClient:
    """A WebTransport session from aioquic with raw streams (for tests and test peers).

    ``open_stream()`` opens a bidirectional stream, ``send_stream`` writes to it,
    ``accept_stream()`` waits for one the server opened, ``receive_stream`` reads (``b""`` at
    its end). ``close_code`` is the server's CLOSE_WEBTRANSPORT_SESSION code once it closed.
    """

    def __init__(self, url: str, verify: bool = False, headers: Mapping[str, str] | None = None,
                 protocols: Sequence[str] = ()) -> None:
        self.url = url
        self.verify = verify
        self.headers = dict(headers or {})
        if protocols:
            self.headers["wt-available-protocols"] = ", ".join(f'"{p}"' for p in protocols)
        self.protocol: str | None = None  # the server's choice (wt-protocol)
        self.close_code: int | None = None
        self.certificate_sha256: str | None = None
        self.session_id: int | None = None

    async def __aenter__(self) -> Self:
        parts = urlsplit(self.url)
        self._streams: dict[int, asyncio.Queue[bytes]] = {}
        self._incoming: asyncio.Queue[int] = asyncio.Queue()
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed = asyncio.Event()
        self._capsules = CapsuleReader()

        def create_protocol(*args: Any, **kwargs: Any) -> _SessionProtocol:
            protocol = _SessionProtocol(*args, **kwargs)
            protocol.client = self
            return protocol

        self._cm = connect(parts.hostname or "", parts.port or 443, configuration=_client_configuration(self.verify, datagrams=True),
                           create_protocol=create_protocol)
        self._protocol: _SessionProtocol = await self._cm.__aenter__()  # type: ignore[assignment]
        protocol = self._protocol
        self.session_id = protocol.quic.get_next_available_stream_id()
        protocol.h3.send_headers(self.session_id, [
            (b":method", b"CONNECT"), (b":protocol", b"webtransport"), (b":scheme", b"https"),
            (b":authority", parts.netloc.encode()), (b":path", _target(parts)),
            (b"sec-webtransport-http3-draft02", b"1"), (b"origin", b"http://" + parts.netloc.encode()),
            *((k.lower().encode(), v.encode()) for k, v in self.headers.items()),
        ])
        protocol.transmit()
        with anyio.fail_after(5):
            await self._ready
        certificate = compat.peer_certificate(protocol.quic)
        if certificate is not None:
            from cryptography.hazmat.primitives import serialization

            self.certificate_sha256 = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
        return self

    # -- from the protocol ---------------------------------------------------------------------
    def _headers(self, headers: dict[bytes, bytes]) -> None:
        if headers.get(b"wt-protocol") is not None:
            self.protocol = headers[b"wt-protocol"].decode().strip('"')
        if not self._ready.done():
            if headers.get(b":status") == b"200":
                self._ready.set_result(None)
            else:
                self._ready.set_exception(ConnectionError(f"status {headers.get(b':status')!r}"))

    def _stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        queue = self._streams.get(stream_id)
        if queue is None:
            queue = self._streams[stream_id] = asyncio.Queue()
            if stream_id & 0x3 == 1:  # server-initiated bidirectional
                self._incoming.put_nowait(stream_id)
        if data:
            queue.put_nowait(data)
        if ended:
            queue.put_nowait(b"")

    def _session_data(self, data: bytes, ended: bool) -> None:
        for capsule in self._capsules.feed(data):
            close = parse_close(capsule.payload) if capsule.type == CLOSE_WEBTRANSPORT_SESSION else None
            if close is not None:
                self.close_code = close[0]
        if ended:
            self._closed.set()

    # -- the test's side -------------------------------------------------------------------------
    def open_stream(self) -> int:
        assert self.session_id is not None
        protocol = self._protocol
        stream_id = protocol.h3.create_webtransport_stream(self.session_id)
        compat.register_bidi_stream(protocol.h3, stream_id, self.session_id)  # pitfall 10
        self._streams[stream_id] = asyncio.Queue()
        protocol.transmit()
        return stream_id

    def send_stream(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self._protocol.quic.send_stream_data(stream_id, data, end_stream=end)
        self._protocol.transmit()

    async def accept_stream(self, timeout: float = 5.0) -> int:
        with anyio.fail_after(timeout):
            return await self._incoming.get()

    async def receive_stream(self, stream_id: int, timeout: float = 5.0) -> bytes:
        with anyio.fail_after(timeout):
            return await self._streams[stream_id].get()

    def close(self, code: int = 0, reason: str = "") -> None:
        assert self.session_id is not None
        self._protocol.h3.send_data(self.session_id, close_capsule(code, reason), end_stream=True)
        self._protocol.transmit()

    def abort(self, error_code: int = 0x100) -> None:
        """Close the QUIC connection at once (CONNECTION_CLOSE): no capsule, no FIN."""
        self._protocol.quic.close(error_code=error_code)
        self._protocol.transmit()

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        with anyio.fail_after(timeout):
            await self._closed.wait()
        return self.close_code

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._cm.__aexit__(exc_type, exc, tb)


class WebTransportClient(WebTransportSessionClient):
    """A WebTransport session speaking rendezvous's channel framing (docs/transports.md).

    ``async with wt_connect(url) as wt: await wt.send("x"); await wt.recv()``.
    """

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self.stream_id = self.open_stream()
        self._reader = MessageReader(max_size=2**32)
        self._messages: list[str | bytes] = []
        return self

    async def send(self, message: str | bytes) -> None:
        self.send_stream(self.stream_id, frame_message(message))

    def send_datagram(self, message: str | bytes) -> None:
        """One message as a datagram (``u8 kind | payload``)."""
        assert self.session_id is not None
        self._protocol.h3.send_datagram(self.session_id, frame_message(message)[4:])
        self._protocol.transmit()

    def send_unidirectional(self, message: str | bytes) -> None:
        """One message as a unidirectional stream (``u8 kind | payload``, then FIN)."""
        assert self.session_id is not None
        stream_id = self._protocol.h3.create_webtransport_stream(self.session_id, is_unidirectional=True)
        self.send_stream(stream_id, frame_message(message)[4:], end=True)

    async def recv(self, timeout: float = 5.0) -> str | bytes:
        with anyio.fail_after(timeout):
            while not self._messages:
                chunk = await self._streams[self.stream_id].get()
                if not chunk and self._streams[self.stream_id].empty():
                    await anyio.sleep(0.01)
                self._messages += self._reader.feed(chunk)
                if self._reader.error is not None and not self._messages:
                    raise ConnectionError(f"bad framing from the server: {self._reader.error.reason}")
            return self._messages.pop(0)


def wt_connect(url: str, verify: bool = False, headers: Mapping[str, str] | None = None,
               protocols: Sequence[str] = ()) -> WebTransportClient:
    """A :class:`WebTransportClient` (channel framing); :class:`WebTransportSessionClient` for raw streams."""
    return WebTransportClient(url, verify, headers, protocols)
