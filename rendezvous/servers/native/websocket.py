"""Sans-IO WebSocket framing, server side (RFC 6455 §5 and §7): bytes in, events out.

:class:`FrameReader` is fed the bytes a client sends and returns what they mean: whole
messages (``str`` for text, ``bytes`` for binary), :class:`Ping`, :class:`Pong` and
:class:`Close`. A violation raises :class:`ProtocolError` carrying the close code to fail the
connection with (1002 protocol error, 1007 bad UTF-8, 1009 too big). No sockets, no time:
the native server owns the I/O, the tests feed bytes (and compare with wsproto).

Data frame payloads are consumed as they arrive, so nothing larger than one control frame
(125 bytes) plus a frame header is ever held unparsed; a message is refused on the header
of the frame that would take it past the cap, before its payload is buffered. Text is
checked incrementally, so invalid UTF-8 fails the connection as soon as it is seen.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable

_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_OPCODES = frozenset((_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG))
#: the codes a peer may send in a close frame from the range RFC 6455 reserves for itself
#: (§7.4.1; 1012–1013 registered since); 1005, 1006 and 1015 are never sent, 3000–4999 are free
_PEER_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013))
#: frames one fragmented message may span: empty continuation frames must not be free
MAX_FRAGMENTS = 4096

_utf8_decoder: Callable[[], codecs.IncrementalDecoder] = codecs.getincrementaldecoder("utf-8")


class ProtocolError(Exception):
    """The peer broke the protocol; fail the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Ping:
    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Pong:
    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Close:
    """The peer's close frame: ``code`` is 1005 when it carried none."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


Event = str | bytes | Ping | Pong | Close


def unmask(payload: bytes | bytearray, mask: bytes, offset: int = 0) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` starting at mask byte ``offset``."""
    n = len(payload)
    if not n:
        return b""
    if offset:
        mask = mask[offset:] + mask[:offset]
    if mask == b"\x00\x00\x00\x00":
        return bytes(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def parse_close(payload: bytes) -> Close:
    """A close frame's payload → :class:`Close`, or :class:`ProtocolError` (§5.5.1, §7.4)."""
    if not payload:
        return Close(1005, "")
    if len(payload) == 1:
        raise ProtocolError(1002, "close frame with a 1-byte payload")
    code = (payload[0] << 8) | payload[1]
    if not (code in _PEER_CLOSE_CODES or 3000 <= code <= 4999):
        raise ProtocolError(1002, f"close code {code} may not be sent")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(1007, "close reason is not UTF-8") from None
    return Close(code, reason)


class FrameReader:
    """The frames one client sends, turned into events. Feed it bytes; it keeps the rest."""

    __slots__ = (
        "_buf",
        "_decoder",
        "_fin",
        "_frame_opcode",
        "_frames",
        "_mask",
        "_offset",
        "_opcode",
        "_parts",
        "_remaining",
        "_size",
        "_started",
        "closed",
        "max_fragments",
        "max_message_size",
        "only",
    )

    def __init__(self, max_message_size: int, max_fragments: int = MAX_FRAGMENTS) -> None:
        self.max_message_size = max_message_size
        self.max_fragments = max_fragments
        #: the one data opcode accepted for new messages (0: both); the other closes 1003
        self.only = 0
        #: a close frame was read; anything after it is ignored
        self.closed = False
        self._buf = bytearray()
        # the data frame whose payload is arriving
        self._remaining = 0
        self._mask = b""
        self._offset = 0
        self._fin = False
        self._frame_opcode = 0
        self._started = False  # its first payload chunk was seen (sequence checked)
        # the message being assembled
        self._opcode = 0  # 0: none in progress
        self._parts: list[bytes] | list[str] = []
        self._size = 0
        self._frames = 0
        self._decoder: codecs.IncrementalDecoder | None = None

    @property
    def buffered(self) -> int:
        """Bytes held: unparsed input plus the message being assembled."""
        return len(self._buf) + self._size

    def feed(self, data: bytes) -> list[Event]:
        """Events for ``data`` (and whatever was left over from earlier feeds)."""
        if self.closed:
            return []
        buf = self._buf
        buf += data
        events: list[Event] = []
        pos = 0
        end = len(buf)
        while True:
            if self._remaining:
                take = min(self._remaining, end - pos)
                if not take:
                    break
                chunk = unmask(buf[pos : pos + take], self._mask, self._offset)
                pos += take
                self._remaining -= take
                self._offset = (self._offset + take) & 3
                self._data(chunk, not self._remaining, events)
                continue
            if end - pos < 2:
                break
            b0 = buf[pos]
            b1 = buf[pos + 1]
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode not in _OPCODES:
                raise ProtocolError(1002, f"unknown opcode {opcode:#x}")
            control = opcode & 0x8
            if control and not fin:
                raise ProtocolError(1002, "fragmented control frame")
            length = b1 & 0x7F
            if control and length > 125:
                raise ProtocolError(1002, "control frame over 125 bytes")
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                if length < 126:
                    raise ProtocolError(1002, "payload length not minimally encoded")
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                if length < 65536:
                    raise ProtocolError(1002, "payload length not minimally encoded")
                if length >> 63:
                    raise ProtocolError(1002, "payload length has its top bit set")
                head = 10
            if b0 & 0x70:
                raise ProtocolError(1002, "reserved bits set")
            if not b1 & 0x80:
                raise ProtocolError(1002, "client frames must be masked")
            if end - pos < head + 4:
                break
            if control:
                if end - pos < head + 4 + length:
                    break
                start = pos + head + 4
                payload = unmask(buf[start : start + length], bytes(buf[start - 4 : start]))
                pos = start + length
                if opcode == _PING:
                    events.append(Ping(payload))
                elif opcode == _PONG:
                    events.append(Pong(payload))
                else:
                    events.append(parse_close(payload))
                    self.closed = True
                    pos = end
                    break
                continue
            if self.only and opcode and opcode != self.only:
                raise ProtocolError(1003, "binary message on a text channel" if self.only == _TEXT else "text message on a binary channel")
            if self._size + length > self.max_message_size:
                raise ProtocolError(1009, "message too big")
            self._size += length
            self._mask = bytes(buf[pos + head : pos + head + 4])
            self._offset = 0
            self._fin = bool(fin)
            self._frame_opcode = opcode
            self._started = False
            pos += head + 4
            if length:
                self._remaining = length
            else:
                self._data(b"", True, events)
        del buf[:pos]
        return events

    def _data(self, chunk: bytes, frame_done: bool, events: list[Event]) -> None:
        if not self._started:  # the frame's first payload: does it fit the message sequence?
            self._started = True
            if self._frame_opcode == _CONTINUATION:
                if not self._opcode:
                    raise ProtocolError(1002, "continuation frame without a message")
                self._frames += 1
                if self._frames > self.max_fragments:
                    raise ProtocolError(1009, "message in too many frames")
            else:
                if self._opcode:
                    raise ProtocolError(1002, "expected a continuation frame")
                self._opcode = self._frame_opcode
                self._frames = 1
        done = frame_done and self._fin
        if frame_done:
            self._started = False
        if self._opcode == _TEXT:
            if done and not self._parts and self._decoder is None:  # the common case: one frame
                try:
                    events.append(chunk.decode("utf-8"))
                except UnicodeDecodeError:
                    raise ProtocolError(1007, "invalid UTF-8") from None
                self._opcode = 0
                self._size = 0
                return
            if self._decoder is None:
                self._decoder = _utf8_decoder()
            try:
                text = self._decoder.decode(chunk, done)
            except UnicodeDecodeError:
                raise ProtocolError(1007, "invalid UTF-8") from None
            if text:
                self._parts.append(text)  # type: ignore[arg-type]
            if done:
                events.append("".join(self._parts))  # type: ignore[arg-type]
        else:
            if chunk:
                self._parts.append(chunk)  # type: ignore[arg-type]
            if done:
                parts = self._parts
                events.append(parts[0] if len(parts) == 1 else b"".join(parts))  # type: ignore[arg-type]
        if done:
            self._opcode = 0
            self._parts = []
            self._size = 0
            self._decoder = None


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame (servers do not mask)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def text_frame(text: str) -> bytes:
    return frame(_TEXT, text.encode())


def binary_frame(data: bytes) -> bytes:
    return frame(_BINARY, data)


def pong_frame(payload: bytes) -> bytes:
    return frame(_PONG, payload)


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame; codes that are never sent (1005, 1006, 1015) give an empty payload."""
    if code in (1005, 1006, 1015):
        return frame(_CLOSE, b"")
    data = reason.encode()
    if len(data) > 123:  # cut on a character boundary: the peer checks the reason's UTF-8
        data = data[:123].decode("utf-8", "ignore").encode()
    return frame(_CLOSE, struct.pack("!H", code) + data)
