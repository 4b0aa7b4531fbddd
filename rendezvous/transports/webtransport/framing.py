"""rendezvous's message framing over WebTransport, sans-IO (docs/transports.md).

On the session's message stream each message is ``u32 length (big endian) | u8 kind (0 text,
1 binary) | payload``; a datagram or a unidirectional stream carries exactly one message as
``u8 kind | payload``. Errors carry the close code a WebSocket would use: 1009 (too big), 1002
(bad kind on the stream), 1007 (text that is not UTF-8).
"""

from __future__ import annotations

import struct

TEXT, BINARY = 0, 1
_HEADER = struct.Struct("!IB")


class FramingError(Exception):
    """The peer broke the framing; ``code`` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def frame_message(message: str | bytes) -> bytes:
    kind, data = (TEXT, message.encode()) if isinstance(message, str) else (BINARY, message)
    return _HEADER.pack(len(data), kind) + data


def _decode(kind: int, payload: bytes) -> str | bytes:
    if kind == BINARY:
        return payload
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise FramingError(1007, "invalid UTF-8") from None


def decode_single(data: bytes, max_size: int) -> str | bytes | None:
    """The message in a datagram or a unidirectional stream; None if it is not one (to drop)."""
    if not data or data[0] not in (TEXT, BINARY):
        return None
    if len(data) - 1 > max_size:
        raise FramingError(1009, "message too big")
    return _decode(data[0], data[1:])


class MessageReader:
    """Messages from the message stream's bytes, fed as they arrive.

    ``feed`` returns the messages completed so far; once the framing breaks, ``error`` is set
    (the messages before the fault are still returned) and nothing more is read.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.error: FramingError | None = None
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[str | bytes]:
        if self.error is not None:
            return []
        self._buffer += data
        out: list[str | bytes] = []
        try:
            while len(self._buffer) >= _HEADER.size:
                length, kind = _HEADER.unpack_from(self._buffer)
                if length > self.max_size:
                    raise FramingError(1009, "message too big")
                if kind not in (TEXT, BINARY):
                    raise FramingError(1002, "bad frame kind")
                end = _HEADER.size + length
                if len(self._buffer) < end:
                    break
                payload = bytes(self._buffer[_HEADER.size:end])
                del self._buffer[:end]
                out.append(_decode(kind, payload))
        except FramingError as error:
            self.error = error
            self._buffer.clear()
        return out
