"""WebTransport sessions as the framework sees them: a raw session (a :class:`SessionRoute`
gets it whole) or a message channel (a :class:`ChannelRoute`'s :class:`Channel`).

Both are fed by the HTTP/3 protocol (``_session_data``, ``_stream_data``, ``_datagram``) and
send through it (the :class:`Carrier` seam); the byte formats are in ``capsules`` and
``framing``.
"""

from __future__ import annotations

from typing import Protocol

from rendezvous.transports.base import ChannelClosed, ConnectionInfo, Inbox
from rendezvous.transports.webtransport.capsules import (
    CLOSE_WEBTRANSPORT_SESSION,
    CapsuleError,
    CapsuleReader,
    close_capsule,
    parse_close,
)
from rendezvous.transports.webtransport.framing import FramingError, MessageReader, decode_single, frame_message


class Carrier(Protocol):
    """What a session needs from the HTTP/3 connection that carries it."""

    def respond(self, stream_id: int, status: int, end: bool = False, protocol: str | None = None) -> None: ...
    def send_stream(self, stream_id: int, data: bytes, end: bool = False) -> None: ...
    def open_bidi_stream(self, session_id: int) -> int: ...
    async def drain(self, stream_id: int, timeout: float | None, state: Inbox) -> None: ...
    def wake_drains(self) -> None: ...
    def end_session(self, session_id: int, capsule: bytes) -> None: ...


class WebTransportStream:
    """One bidirectional WebTransport stream of a :class:`WebTransportSession` (raw bytes)."""

    def __init__(self, session: WebTransportSession, stream_id: int) -> None:
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

    def __init__(self, protocol: Carrier, session_id: int, info: ConnectionInfo) -> None:
        self.info = info
        self._protocol = protocol
        self._session_id = session_id
        self._capsules = CapsuleReader()
        self._inbox = Inbox()  # for a session: closed state only (peer streams go to _incoming)
        self._accepted = False
        self._streams: dict[int, WebTransportStream] = {}
        self._incoming = Inbox()  # streams the peer opened, not yet accepted

    @property
    def closed(self) -> bool:
        return self._inbox.closed

    def expect(self, kind: str) -> None:
        """A hint only: this transport hands whole messages to the profile, which checks their kind."""

    async def accept(self, subprotocol: str | None = None) -> None:
        if self._inbox.closed:
            raise ChannelClosed(1006, "session gone before accept")
        self._accepted = True
        self._protocol.respond(self._session_id, 200, protocol=subprotocol)

    async def refuse(self, status: int = 403, body: bytes = b"") -> None:
        self._inbox.close(1005)
        self._protocol.respond(self._session_id, status, end=True)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._close(code, reason)

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

    def _close(self, code: int, reason: str = "") -> None:
        """Close now: a close capsule and FIN on the CONNECT stream (once accepted)."""
        if self._inbox.closed:
            return
        self._mark_closed(code)
        if self._accepted:
            self._protocol.end_session(self._session_id, close_capsule(code, reason))

    # -- from the protocol ---------------------------------------------------------------
    def _mark_closed(self, code: int, reason: str = "") -> None:
        self._inbox.close(code, reason)
        self._incoming.close(code, reason)
        for stream in self._streams.values():
            stream._inbox.close(code, reason)
        self._protocol.wake_drains()  # a send waiting for acknowledgements sees the close

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
        try:
            capsules = self._capsules.feed(data)
        except CapsuleError:
            self._close(1009, "capsule too big")
            return
        for capsule in capsules:
            close = parse_close(capsule.payload) if capsule.type == CLOSE_WEBTRANSPORT_SESSION else None
            if close is not None:
                self._mark_closed(*close)
            # anything else (GREASE capsules, DRAIN_WEBTRANSPORT_SESSION, ...) is ignored
        if ended:
            self._mark_closed(1005)  # (a close capsule before it already set the code)
            self._protocol.end_session(self._session_id, b"")


class WebTransportChannel(WebTransportSession):
    """One WebTransport session as a message channel (framed on the client's first bidi stream)."""

    def __init__(self, protocol: Carrier, session_id: int, info: ConnectionInfo, max_message_size: int) -> None:
        super().__init__(protocol, session_id, info)
        self._max = max_message_size
        self._stream_id: int | None = None
        self._reader = MessageReader(max_message_size)
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
        try:
            message = decode_single(data, self._max)
        except FramingError as error:
            self._close(error.code, error.reason)
            return
        if message is not None:  # else not a message: dropped (a datagram has no one to tell)
            self._inbox.put(message)

    def _datagram(self, data: bytes) -> None:
        self._one_message(data)

    def _stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        if stream_id & 0x2:  # a unidirectional stream from the peer: one message, ended by FIN
            buffer = self._uni.setdefault(stream_id, bytearray())
            buffer += data
            if len(buffer) > self._max + 1:
                del self._uni[stream_id]
                self._close(1009, "message too big")
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
        for message in self._reader.feed(data):
            self._inbox.put(message)
        if self._reader.error is not None:
            self._close(self._reader.error.code, self._reader.error.reason)
            return
        if ended:
            self._mark_closed(1005)
